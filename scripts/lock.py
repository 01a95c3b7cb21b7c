"""Generate requirements.lock from the dependencies pyproject.toml declares (`make lock`).

A throwaway virtual environment in a temporary folder installs the project with the extras that
`make install` needs (`.[test,dask]`; the `docs` extra stays out), with the versions of PINNED
held, and `pip freeze --exclude-editable` of it, sorted by name, becomes the lock: one `name==version`
a line, after the comment lines that head the current file, if any. pip, setuptools and wheel are
left out, as pip freeze leaves them out.

By default the pins already in the output file are kept where the declared dependencies still
need them (they are passed to pip as constraints, as pip-compile keeps existing pins): a package
no longer needed drops out, a newly needed one comes in at its newest version, and with nothing
changed the file comes out byte for byte the same. `--upgrade` resolves everything afresh.
Either way the lock is for this interpreter and platform (Linux, CPython 3.11, as `make install`
and CI use).

requirements.lock is part of every pipeline cache key and a DVC dependency of every stage: a
changed pin retrains every stage. `--resolve-only` resolves without installing (`pip install
--dry-run --report`: minutes instead of a multi-GB install) and `--output` writes elsewhere, to
see what a regeneration would change before it does.

    python3.11 scripts/lock.py                      # rewrite requirements.lock (make lock)
    python3.11 scripts/lock.py --resolve-only --output /tmp/requirements.lock && \\
        diff requirements.lock /tmp/requirements.lock
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("test", "dask")
# Held by the project: other torch builds are multi-GB downloads and change every image model.
PINNED = ("torch==2.14.1", "torchvision==0.29.1")
# What `pip freeze` leaves out without --all.
NOT_FROZEN = frozenset({"pip", "setuptools", "wheel", "distribute"})
PIP = ("-m", "pip", "--disable-pip-version-check", "--no-input")


def canonical(name: str) -> str:
    """PEP 503's normalised name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def header_of(text: str) -> list[str]:
    """The comment lines (and blank lines among them) that head a lock file."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("#") or (lines and not line.strip()):
            lines.append(line)
        else:
            break
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def lock_text(pins: dict[str, str], header: list[str], project: str) -> str:
    """The lock file: `header`, then `name==version` sorted by normalised name (as pip freeze
    orders it), without the project itself and the packages pip freeze leaves out."""
    skip = NOT_FROZEN | {canonical(project)}
    body = [f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda kv: canonical(kv[0]))
            if canonical(name) not in skip]
    return "\n".join([*header, *body]) + "\n"


def parse_freeze(text: str) -> dict[str, str]:
    """`pip freeze` output as {name: version}; anything but `name==version` (a direct URL, a local
    path) cannot go into a lock that installs from the index, so it stops the script."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match is None:
            raise SystemExit(f"lock: pip freeze gave a line that is not name==version: {line!r}")
        pins[match.group(1)] = match.group(2)
    return pins


def run(cmd: list[str], *, capture: bool = False) -> str:
    """Run `cmd`, its stderr shown less pip's warnings about find-links folders absent here (as
    the Makefile's install drops them); its stdout returned when `capture`, else shown."""
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE)
    sys.stderr.write("".join(line for line in proc.stderr.splitlines(keepends=True)
                             if not line.startswith("WARNING: Location")))
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return proc.stdout if capture else ""


def resolve(python: str, venv: Path, constraints: Path, *, resolve_only: bool) -> dict[str, str]:
    """{name: version} of everything `.[test,dask]` needs, resolved in a new venv at `venv`."""
    run([python, "-m", "venv", str(venv)])
    vpy = str(venv / "bin" / "python")
    # The venv's bundled pip may predate --report and metadata-only resolution.
    run([vpy, *PIP, "install", "--quiet", "--upgrade", "pip"])
    target = f"{ROOT}[{','.join(EXTRAS)}]"
    if resolve_only:
        report = venv / "report.json"
        run([vpy, *PIP, "install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report),
             "-c", str(constraints), "-e", target])
        items = json.loads(report.read_text())["install"]
        return {item["metadata"]["name"]: item["metadata"]["version"] for item in items}
    run([vpy, *PIP, "install", "--quiet", "-c", str(constraints), "-e", target])
    return parse_freeze(run([vpy, *PIP, "freeze", "--exclude-editable"], capture=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--output", type=Path, default=ROOT / "requirements.lock",
                    help="the lock file to write (default: requirements.lock); its pins (requirements.lock's for a new "
                         "file) are kept unless --upgrade, and the report compares with them")
    ap.add_argument("--upgrade", action="store_true", help="resolve every package afresh instead of keeping pins")
    ap.add_argument("--resolve-only", action="store_true",
                    help="resolve with pip install --dry-run --report instead of installing (no multi-GB download)")
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter of the throwaway venv (default: this one; the lock is for its version)")
    args = ap.parse_args(argv)

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    current = args.output.read_text() if args.output.exists() else ""
    if not current and (ROOT / "requirements.lock").exists():
        current = (ROOT / "requirements.lock").read_text()
    pinned_names = {canonical(p.split("==")[0]) for p in PINNED}
    kept = [] if args.upgrade else [f"{n}=={v}" for n, v in parse_freeze("\n".join(
        line for line in current.splitlines() if not line.startswith("#"))).items()
        if canonical(n) not in pinned_names]

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lesion-lock-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join([*PINNED, *kept]) + "\n")
        try:
            pins = resolve(args.python, Path(tmp) / "venv", constraints, resolve_only=args.resolve_only)
        except subprocess.CalledProcessError as e:
            hint = "" if args.upgrade else " (if a kept pin conflicts with a declared dependency, try --upgrade)"
            print(f"lock: {' '.join(e.cmd[:1])} ... failed with exit status {e.returncode}{hint}", file=sys.stderr)
            return 1
    text = lock_text(pins, header_of(current), project)
    old = {canonical(n): v for n, v in parse_freeze(current).items()} if current else {}
    new = {canonical(n): v for n, v in parse_freeze(text).items()}
    changed = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])
    args.output.write_text(text)
    print(f"lock: wrote {args.output} ({len(new)} packages, {time.monotonic() - start:.0f} s): "
          f"{len(new.keys() - old.keys())} added, {len(old.keys() - new.keys())} removed, {len(changed)} changed")
    for name in sorted(new.keys() - old.keys()):
        print(f"  + {name}=={new[name]}")
    for name in sorted(old.keys() - new.keys()):
        print(f"  - {name}=={old[name]}")
    for name in changed:
        print(f"  ~ {name} {old[name]} -> {new[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
