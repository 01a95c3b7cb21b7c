"""The `lesion server` command: its arguments and its handler.

Split from `lesion_ml.app.cli`, whose `build_parser` adds it with `add_server_command`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lesion_ml import artefacts


def _server(args: argparse.Namespace) -> int:
    from lesion_ml.app import server
    from lesion_ml.config import load_params

    folder = artefacts.SERVER
    if args.command and args.action != "run":
        print(f"lesion server {args.action}: takes no command ({' '.join(args.command)}); "
              "`lesion server run -- COMMAND` runs one", file=sys.stderr)
        return 2
    if args.action == "start":
        name = load_params(args.params).retrain.name
        try:
            info = server.start(Path.cwd(), folder, host=args.host, port=args.port, deployment=f"retrain/{name}")
        except server.ServerError as err:
            print(f"lesion server start: {err}", file=sys.stderr)
            return 1
        print(f"Prefect UI: {info['ui']}  (deployments: {info['ui']}/deployments)\n"
              f"serving deployment retrain/{name}; trigger it with\n"
              f"  PREFECT_API_URL={info['api']} prefect deployment run 'retrain/{name}'\n"
              f"logs: {folder}/server.log, {folder}/retrain.log; stop with `lesion server stop`")
    elif args.action == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        try:
            return server.run_with_api(command, folder, say=lambda m: print(f"lesion server run: {m}", file=sys.stderr))
        except server.ServerError as err:
            print(f"lesion server run: {err}", file=sys.stderr)
            return 2
    elif args.action == "stop":
        stopped = server.stop(folder)
        print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
    else:
        st = server.status(folder)
        print(", ".join(f"{k}: {'pid ' + str(v) if v else 'not running'}" for k, v in st.items()))
    return 0


def add_server_command(sub: argparse._SubParsersAction) -> None:
    """`lesion server`: a local Prefect server serving the retrain deployment."""
    sv = sub.add_parser("server", help="a local Prefect server (UI) serving the retrain deployment")
    sv.add_argument("action", choices=["start", "stop", "status", "run"],
                    help="start the server and the deployment in the background, stop both, say whether they run, "
                    "or run a command (after --) with one Prefect API for every stage flow it starts: the running "
                    "server's, else a temporary one for the command's duration (make run: dvc repro)")
    sv.add_argument("command", nargs="*",
                    help="with run: the command and its arguments, after -- (e.g. -- dvc repro)")
    sv.add_argument("--host", default="127.0.0.1", help="address the server listens on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=4200, help="port of the server and its UI (default 4200)")
    sv.add_argument("--params", default=str(artefacts.PARAMS),
                    help=f"{artefacts.PARAMS} naming the deployment (retrain.name)")
    sv.set_defaults(func=_server)
