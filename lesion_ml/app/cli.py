"""The `lesion` command line."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lesion_ml import artefacts
from lesion_ml.app.cli_bench import add_bench_commands
from lesion_ml.app.cli_server import add_server_command
from lesion_ml.config import SyntheticConfig

ISIC2024_SIZE = {"n_patients": 1_042, "n_lesions": 401_059, "n_malignant": 393}  # the 2024 training set


def _synth(args: argparse.Namespace) -> int:
    import time

    from lesion_ml.data.synthetic import generate_synthetic

    sizes = dict(ISIC2024_SIZE) if args.full_size else {}
    for key, value in (("n_patients", args.patients), ("n_lesions", args.lesions), ("n_malignant", args.malignant),
                       ("malignant_fraction", args.malignant_fraction), ("seed", args.seed)):
        if value is not None:
            sizes[key] = value
    cfg = _synthetic_config(sizes)
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        took = time.perf_counter() - start
        print(f"\r{done:,}/{total:,} lesions, {done / took:,.0f}/s", end="", file=sys.stderr, flush=True)

    h5, csv = generate_synthetic(Path(args.out), cfg, workers=args.workers,
                                 progress=progress if sys.stderr.isatty() or args.progress else None)
    took = time.perf_counter() - start
    print(("\n" if args.progress or sys.stderr.isatty() else "") + f"wrote {h5} and {csv} in {took:,.1f} s "
          f"({args.workers} worker{'s' if args.workers > 1 else ''})", file=sys.stdout)
    return 0


SYNTH_FLAGS = {"n_patients": "--patients", "n_lesions": "--lesions", "n_malignant": "--malignant",
               "malignant_fraction": "--malignant-fraction", "seed": "--seed"}


def _synthetic_config(sizes: dict) -> SyntheticConfig:
    """The generator's settings, with errors in terms of `lesion synth`'s flags."""
    import re

    from pydantic import ValidationError

    try:
        return SyntheticConfig(**sizes)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            text = e["msg"].removeprefix("Value error, ")
            if e["loc"]:
                text = f"{e['loc'][0]}: {text} (got {e['input']})"
            problems.append(re.sub("|".join(SYNTH_FLAGS), lambda m: SYNTH_FLAGS[m.group(0)], text))
        raise ValueError("; ".join(problems)) from None


def _metrics(args: argparse.Namespace) -> int:
    import json

    path = Path(args.path)
    from lesion_ml.evaluate.compare import metrics_text

    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; run `make run` (dvc repro) first") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a metrics file of the evaluate stage ({err})") from None
    if not isinstance(metrics, dict) or "models" not in metrics:
        raise ValueError(f"{path}: not a metrics file of the evaluate stage ('models')")

    print(metrics_text(metrics))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from contextlib import closing

    from lesion_ml.image.inference import select_device
    from lesion_ml.io import write_csv
    from lesion_ml.model.bundle import FinalModel
    from lesion_ml.model.predict import predict_cases, prepare_inputs

    device = select_device(args.device)
    model = FinalModel.load(args.model, device)
    inputs = prepare_inputs(model, args.images, Path(args.metadata) if args.metadata else None)
    with closing(inputs.store):
        out = predict_cases(model, inputs, device, batch_size=args.batch_size, tta=args.tta,
                            num_workers=args.workers, skip_bad=args.skip_bad)
    write_csv(out, args.out)
    ok = out["status"] == "ok"
    used = "; ".join(f"{name}: {len(g)} images, threshold {g['threshold'].iloc[0]:.4g}"
                     for name, g in out.groupby("model", sort=False))
    print(f"wrote {args.out}: {len(out)} images, {int((out['decision'][ok] == 1).sum())} flagged malignant ({used})"
          + (f", {int((~ok).sum())} unreadable" if (~ok).any() else ""))
    return 0


def _params(args: argparse.Namespace) -> int:
    from lesion_ml.config import apply_override

    p = apply_override(args.merge, args.params)
    models = ", ".join(f"{n} ({c.backbone}, {c.image_size} px)" for n, c in p.train_cnn.models.items())
    print(f"merged {args.merge} into {args.params}: data.source {p.data.source} ({p.data.path}), image models: "
          f"{models}; run `dvc repro` (make run)")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from lesion_ml.app.validation import run_validation

    if args.export and not args.recalibrate:
        raise ValueError("--export writes a copy of the model with a local threshold: add --recalibrate")
    res = run_validation(args.model, images=args.images, labels=args.labels, out=args.out, metadata=args.metadata,
                         fmt=args.format, ignore_unlabelled=args.ignore_unlabelled, tta=args.tta,
                         n_boot=args.bootstrap, device=args.device, batch_size=args.batch_size, workers=args.workers,
                         target_sensitivity=args.target_sensitivity if args.recalibrate else None,
                         export=args.export)
    ci, tt = res["ci95"], res["threshold_transfer"]
    print(f"{res['model']} on {res['n_scored']} images ({res['n_malignant']} malignant): ROC-AUC {res['roc_auc']:.3f} "
          f"[{ci['roc_auc'][0]:.3f}, {ci['roc_auc'][1]:.3f}], pAUC80 {res['pauc_80']:.3f}, PR-AUC {res['pr_auc']:.3f}; "
          f"at the exported threshold {res['threshold']:.4g}: sensitivity {tt['external']['sensitivity']:.3f} "
          f"(out of fold {tt['out_of_fold']['sensitivity'] or float('nan'):.3f}), specificity "
          f"{tt['external']['specificity']:.3f} (out of fold {tt['out_of_fold']['specificity'] or float('nan'):.3f}); "
          f"calibration slope {res['calibration']['slope']:.2f}")
    if "local_threshold" in res:
        lt = res["local_threshold"]
        print(f"local threshold for sensitivity >= {lt['target_sensitivity']}: {lt.get('threshold', res['threshold']):.4g} "
              f"(sensitivity {lt['overall']['sensitivity']:.3f}, specificity {lt['overall']['specificity']:.3f} here)"
              + (f"; recalibrated model written to {res['exported']}" if "exported" in res else ""))
    files = artefacts.VALIDATION_FILES
    print(f"wrote {args.out}/{files['report']}, {files['validation']}, {files['predictions']}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from contextlib import closing

    import numpy as np

    import pandas as pd

    from lesion_ml.io import atomic_path, write_csv
    from lesion_ml.model.bundle import FinalModel
    from lesion_ml.model.explain import explain_images, explain_metadata, importance_png, png_bytes
    from lesion_ml.model.predict import prepare_inputs, score_images

    model = FinalModel.load(args.model, "cpu")
    inputs = prepare_inputs(model, args.images, Path(args.metadata) if args.metadata else None)
    ids = inputs.image_ids[: args.limit] if args.limit else inputs.image_ids
    out = Path(args.out)
    with closing(inputs.store):
        rows = []
        for row, panel in explain_images(model, inputs.store, ids, features=inputs.features):
            with atomic_path(out / row["heatmap"]) as tmp:
                tmp.write_bytes(png_bytes(panel))
            rows.append(row)
        cams = pd.DataFrame(rows)
        if not cams.empty:
            write_csv(cams, out / "gradcam.csv")
        feats = inputs.features
        if feats is not None:
            feats = feats.loc[[i for i in ids if i in feats.index]]
            if model.stack and not feats.empty:  # the stack's inputs include the image models' scores
                meta = feats.to_numpy(np.float32)
                scores = {f"score_{c}": score_images(model, c, inputs.store, ids=list(feats.index),
                                                     meta=meta if model.cnns[c].n_meta else None, device="cpu")[0]
                          for c in model.manifest["components"]}
                feats = feats.assign(**scores)
    explained = explain_metadata(model, feats) if feats is not None else None
    if explained is not None:
        write_csv(explained.contributions, out / "metadata_contributions.csv")
        write_csv(explained.importance, out / "feature_importance.csv")
        with atomic_path(out / "feature_importance.png") as tmp:
            tmp.write_bytes(importance_png(explained.importance))
    print(f"wrote {len(cams)} Grad-CAM overlays to {out}" + (
        f"; metadata contributions for {explained.contributions['image_id'].nunique()} images" if explained else ""))
    return 0


def _docs(args: argparse.Namespace) -> int:
    from lesion_ml.app.docs import stale_pages, write_reference
    from lesion_ml.app.figures import stale_figures, write_figures

    out = Path(args.out)
    if args.check:
        stale = stale_pages(out, parser=build_parser())
        for path in stale:
            print(f"{path}: out of date with the code; run `lesion docs --out {out}`", file=sys.stderr)
        figures = stale_figures(out)
        for path in figures:
            print(f"{path}: its figures differ from the committed reports; run `lesion docs --out {out}`",
                  file=sys.stderr)
        if not stale and not figures:
            print(f"{out}: the reference pages and the figures are up to date")
        return 1 if stale or figures else 0
    written = write_reference(out, parser=build_parser()) + write_figures(out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    """`lesion synth`: a demo data set in ISIC 2024 format."""
    synth = sub.add_parser("synth", help="write a demo data set in ISIC 2024 format")
    synth.add_argument("--out", required=True, help="output folder (train-image.hdf5, train-metadata.csv)")
    synth.add_argument("--full-size", action="store_true",
                       help="ISIC 2024 size: 1,042 patients, 401,059 lesions, 393 malignant (other flags override)")
    synth.add_argument("--patients", type=int, help=f"number of patients (default {SyntheticConfig().n_patients})")
    synth.add_argument("--lesions", type=int, help="total lesions, spread heavy-tailed over patients "
                       "(default: 4-14 per patient)")
    synth.add_argument("--malignant", type=int, help="exact number of malignant lesions")
    synth.add_argument("--malignant-fraction", type=float, help="share of malignant lesions, 0..1")
    synth.add_argument("--seed", type=int, help=f"random seed (default {SyntheticConfig().seed})")
    synth.add_argument("--workers", type=int, default=1, help="processes that draw tiles; any number gives "
                       "the same files (default 1)")
    synth.add_argument("--progress", action="store_true", help="report progress on stderr even when not a terminal")
    synth.set_defaults(func=_synth)


def _add_metrics(sub: argparse._SubParsersAction) -> None:
    """`lesion metrics`: the evaluate stage's figures as a table."""
    met = sub.add_parser("metrics", help=f"a compact table of {artefacts.METRICS} (out-of-fold, every model)")
    met.add_argument("path", nargs="?", default=str(artefacts.METRICS),
                     help=f"the evaluate stage's metrics file (default {artefacts.METRICS})")
    met.set_defaults(func=_metrics)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    """`lesion predict`: score new images with an exported model."""
    pr = sub.add_parser("predict", help=f"score new images with an exported model ({artefacts.FINAL})")
    pr.add_argument("--model", default=str(artefacts.FINAL), help=f"the model folder (default {artefacts.FINAL})")
    pr.add_argument("--images", nargs="+", required=True, metavar="PATH",
                    help="one HDF5 file (keys = image ids), one folder (searched recursively) or image files")
    pr.add_argument("--metadata", help="CSV with one row per image (isic_id or image_id column); needed by "
                                       "metadata models unless the model has an image-only fallback")
    pr.add_argument("--out", default="predictions.csv", help="output CSV (default predictions.csv)")
    pr.add_argument("--tta", action="store_true", help="average the 8 flips/quarter turns of each image")
    pr.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    pr.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where to score; auto: CUDA when present, else the CPU")
    pr.add_argument("--skip-bad", action="store_true",
                    help="report unreadable images in the output (status column) instead of stopping")
    pr.set_defaults(func=_predict)


def _add_params(sub: argparse._SubParsersAction) -> None:
    """`lesion params`: merge an override file into params.yaml."""
    pa = sub.add_parser("params", help="merge an override file (e.g. examples/ham10000-400.yaml) into params.yaml")
    pa.add_argument("--merge", required=True, metavar="YAML", help="sections to merge in; its train_cnn.models and "
                    "validate.sets replace the current ones")
    pa.add_argument("--params", default=str(artefacts.PARAMS),
                    help=f"the params file to update (default {artefacts.PARAMS})")
    pa.set_defaults(func=_params)


def _add_validate(sub: argparse._SubParsersAction) -> None:
    """`lesion validate`: score a labelled external set and report on it."""
    va = sub.add_parser("validate", help="score a labelled external set: metrics with intervals, threshold "
                        "transfer, calibration, subgroups, a gallery of errors (HTML + JSON)")
    va.add_argument("--model", default=str(artefacts.FINAL), help=f"the model folder (default {artefacts.FINAL})")
    va.add_argument("--images", nargs="+", required=True, metavar="PATH",
                    help="one HDF5 file, one folder (searched recursively) or image files (as for predict)")
    va.add_argument("--labels", required=True, help="labels CSV: generic (image_file or image_id/isic_id, target "
                    "0/1), HAM10000 (image_id, dx), ISIC 2019 (one-hot) or ISIC 2020 (image_name, target)")
    va.add_argument("--format", default="auto", choices=["auto", "generic", "ham10000", "isic2019", "isic2020"],
                    help="the labels CSV format (default: detected from its columns)")
    va.add_argument("--metadata", help="metadata CSV for models that use it (default: the labels CSV)")
    va.add_argument("--out", required=True, help="output folder: " + ", ".join(
        artefacts.VALIDATION_FILES[k] for k in ("report", "validation", "predictions")))
    va.add_argument("--ignore-unlabelled", action="store_true",
                    help="score only the labelled images (unlabelled ones are listed in the report)")
    va.add_argument("--tta", action="store_true", help="average the 8 flips/quarter turns of each image")
    va.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    va.add_argument("--recalibrate", action="store_true",
                    help="also choose a local threshold on this set (see --target-sensitivity, --export)")
    va.add_argument("--target-sensitivity", type=float, default=0.95,
                    help="sensitivity the local threshold reaches on this set (default 0.95)")
    va.add_argument("--export", help="with --recalibrate: write a copy of the model folder with the local threshold "
                                     "(a new folder; the original is never changed)")
    va.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    va.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    va.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where to score; auto: CUDA when present, else the CPU")
    va.set_defaults(func=_validate)


def _add_explain(sub: argparse._SubParsersAction) -> None:
    """`lesion explain`: Grad-CAM maps and metadata contributions."""
    ex = sub.add_parser("explain", help="Grad-CAM heat maps and metadata feature contributions")
    ex.add_argument("--model", default=str(artefacts.FINAL), help=f"the model folder (default {artefacts.FINAL})")
    ex.add_argument("--images", nargs="+", required=True, metavar="PATH",
                    help="one HDF5 file, one folder (searched recursively) or image files (as for predict)")
    ex.add_argument("--metadata", help="CSV with one row per image (as for predict)")
    ex.add_argument("--out", required=True, help="output folder (PNG overlays, CSV tables)")
    ex.add_argument("--limit", type=int, default=0, help="explain only the first N images (0: all)")
    ex.set_defaults(func=_explain)


def _add_docs(sub: argparse._SubParsersAction) -> None:
    """`lesion docs`: the reference pages generated from the code."""
    do = sub.add_parser("docs", help="write the reference pages params.md (every params.yaml key) and cli.md "
                        "(every lesion command) from the code, and the marked figures regions of README.md and the docs "
                        "pages from the committed reports",
                        description="The folder given by --out sits in the repository root: README.md and reports/ "
                        "are read beside it.")
    do.add_argument("--out", default="docs", help="folder the pages are written to (default docs)")
    do.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each page that differs "
                    "from what would be written (a staleness check for CI)")
    do.set_defaults(func=_docs)


def build_parser() -> argparse.ArgumentParser:
    """The `lesion` parser: one subcommand per group, each with its handler as `func` (listed in this order)."""
    parser = argparse.ArgumentParser(
        prog="lesion", description="lesion-ml: skin-lesion malignancy detection",
        epilog="Training is not a lesion command: the pipeline (ingest, folds, features, every model, evaluation, "
        f"the exported model in {artefacts.FINAL}) runs with `dvc repro` (or `make run`) in the repository, driven by "
        "params.yaml; `lesion params --merge FILE` sets its params.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_synth(sub)
    add_bench_commands(sub)
    _add_metrics(sub)
    _add_predict(sub)
    _add_params(sub)
    _add_validate(sub)
    _add_explain(sub)
    add_server_command(sub)
    _add_docs(sub)
    return parser


# What a user of each command can do about an unreadable image (the library's message names it).
BAD_IMAGE_REMEDY = {
    "predict": "rerun with --skip-bad to score the other images and report this one in the status column",
    "explain": "leave it out of --images (`lesion predict --skip-bad` lists every unreadable image)",
}


def main(argv: list[str] | None = None) -> int:
    from lesion_ml.errors import BadImageError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # config and data errors carry a complete message
        remedy = BAD_IMAGE_REMEDY.get(args.command) if isinstance(err, BadImageError) else None
        print(f"lesion {args.command}: error: {err}" + (f"; {remedy}" if remedy else ""), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
