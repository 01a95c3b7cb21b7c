"""The `lesion` command line."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lesion_ml.config import SyntheticConfig


def _synth(args: argparse.Namespace) -> int:
    from lesion_ml.data.synthetic import generate_synthetic

    defaults = SyntheticConfig()
    cfg = SyntheticConfig(n_patients=args.patients or defaults.n_patients, seed=args.seed,
                          malignant_fraction=args.malignant_fraction or defaults.malignant_fraction)
    h5, csv = generate_synthetic(Path(args.out), cfg)
    print(f"wrote {h5} and {csv}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lesion", description="lesion-ml: skin-lesion malignancy detection")
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write a demo data set in ISIC 2024 format")
    synth.add_argument("--out", required=True, help="output folder (train-image.hdf5, train-metadata.csv)")
    synth.add_argument("--patients", type=int, help="number of patients (default from SyntheticConfig)")
    synth.add_argument("--malignant-fraction", type=float, help="share of malignant lesions, 0..1")
    synth.add_argument("--seed", type=int, default=SyntheticConfig().seed)
    synth.set_defaults(func=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # config and data errors carry a complete message
        print(f"lesion {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
