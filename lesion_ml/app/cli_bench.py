"""The `lesion bench` commands: their arguments and their handlers.

Split from `lesion_ml.app.cli`, whose `build_parser` adds these with `add_bench_commands`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lesion_ml import artefacts as cat
from lesion_ml.config.cnn import BACKBONE_NAMES, BENCH_BACKBONES


def _report(result: dict, table: str, json_path: str | None) -> int:
    """Print a benchmark's table, then its figures as JSON (or write them to `json_path`)."""
    import json

    from lesion_ml.io import write_json

    print(table)
    if json_path:
        write_json(result, json_path)
        print(f"wrote {json_path}")
    else:
        print(json.dumps(result))
    return 0


def _tabular_params(path: str) -> dict:
    """The tabular benchmark's configs from a params.yaml (its prepare, train_gbdt and split
    sections), or {} for the defaults when the file is absent."""
    from lesion_ml.config import load_params

    params = load_params(path) if Path(path).is_file() else None
    return {"prepare": params.prepare, "gbdt": params.train_gbdt, "split": params.split} if params else {}


def _bench(args: argparse.Namespace) -> int:
    from lesion_ml.app.bench import bench_tabular, format_table

    result = bench_tabular(n_rows=args.rows, n_patients=args.patients, malignant=args.malignant,
                           seed=args.seed, **_tabular_params(args.params))
    return _report(result, format_table(result), args.json)


def _bench_train(args: argparse.Namespace) -> int:
    from lesion_ml.app.bench import bench_train, format_train_table

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = bench_train(args.backbone, args.size, args.batch_size, args.steps, args.rounds, args.device,
                         args.workers, Path(args.data) if args.data else None)
    return _report(result, format_train_table(result), args.json)


def _bench_loader(args: argparse.Namespace) -> int:
    from lesion_ml.app.bench import bench_loader, format_loader_table

    result = bench_loader(args.size, args.batch_size, args.images, tuple(args.workers), args.device,
                          Path(args.data) if args.data else None, args.epochs)
    return _report(result, format_loader_table(result), args.json)


def _bench_all(args: argparse.Namespace) -> int:
    from lesion_ml.app.bench import bench_all, format_all_table
    from lesion_ml.io import write_json

    result = bench_all(tuple(args.backbones), args.size, args.rows, repo=Path(args.repo), steps=args.steps,
                       rounds=args.rounds, n_images=args.images, tabular=_tabular_params(args.params))
    print(format_all_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def _bench_scale(args: argparse.Namespace) -> int:
    from lesion_ml.app.bench_scale import bench_scale, format_scale_table

    data = Path(args.data)
    if not (data / "train-image.hdf5").is_file() or not (data / "train-metadata.csv").is_file():
        raise ValueError(f"{data}: needs train-image.hdf5 and train-metadata.csv (--data); write a full-size set "
                         f"with `lesion synth --full-size --out {data} --workers 2`")
    overrides = Path(args.overrides)
    if not overrides.is_file():
        raise ValueError(f"{overrides}: no such scale profile (--overrides)")
    result = bench_scale(data, Path(args.workdir), Path(args.repo), overrides, args.predict_workers,
                         args.predict_batch, Path(args.json), args.predict_only)
    print(format_scale_table(result))
    print(f"wrote {args.json}")
    return 0


def _bench_curve(args: argparse.Namespace) -> int:
    from lesion_ml.app.bench_curve import format_curve_table, learning_curve, plot_curve

    data, external, recipe = Path(args.data), Path(args.external), Path(args.recipe)
    if not (data / "labels.csv").is_file():
        raise ValueError(f"{data}: no labels.csv (--data: a labelled image folder, e.g. ../shared/data/ham10000-2000)")
    if not external.is_dir():
        raise ValueError(f"{external}: no such folder (--external: the recipe's validate set)")
    if not recipe.is_file():
        raise ValueError(f"{recipe}: no such recipe (--recipe)")
    result = learning_curve(data, external, recipe, sorted(args.sizes), Path(args.workdir), Path(args.repo),
                            args.seed, args.group or None, Path(args.json))
    if args.plot:
        plot_curve(result, Path(args.plot))
    print(format_curve_table(result))
    print(f"wrote {args.json}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def _bench_sites(args: argparse.Namespace) -> int:
    from lesion_ml.app.bench_sites import format_sites_table, leave_one_site_out, table_models

    data, recipe = Path(args.data), Path(args.recipe)
    if not (data / "labels.csv").is_file():
        raise ValueError(f"{data}: no labels.csv (--data: a labelled image folder, e.g. ../shared/data/ham10000-2000)")
    if not recipe.is_file():
        raise ValueError(f"{recipe}: no such recipe (--recipe)")
    result = leave_one_site_out(data, recipe, Path(args.workdir), args.site, args.group or None, Path(args.repo),
                                Path(args.json))
    print(format_sites_table(result, table_models(result)))
    print(f"wrote {args.json} ({result['seconds'] / 60:.1f} min)")
    return 0


def _bench_tune(args: argparse.Namespace) -> int:
    import tempfile

    from lesion_ml.app.bench_tune import bench_tune, format_tune_table
    from lesion_ml.config import apply_override, load_params
    from lesion_ml.errors import ConfigError

    params = load_params(args.params)
    if args.override:
        with tempfile.TemporaryDirectory() as tmp:
            params = apply_override(args.override, args.params, Path(tmp) / "params.yaml")
    if args.study not in params.tune.studies:
        raise ConfigError(f"no study {args.study!r} in tune.studies of {args.params}"
                          f"{' merged with ' + args.override if args.override else ''}; have "
                          f"{sorted(params.tune.studies)} (--study, --override)")
    result = bench_tune(params, args.study, n_trials=args.trials, n_rows=args.rows, n_patients=args.patients,
                        malignant=args.malignant, seed=args.seed)
    return _report(result, format_tune_table(result), args.json)


def _add_table_size(parser: argparse.ArgumentParser) -> None:
    """The generated metadata table's size (ISIC 2024's by default) and seed."""
    parser.add_argument("--rows", type=int, default=401_059, help="rows of generated metadata (default 401,059)")
    parser.add_argument("--patients", type=int, default=1_042, help="patients the rows belong to (default 1,042)")
    parser.add_argument("--malignant", type=int, default=393, help="number of malignant rows")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the generated table (default 0)")


def _add_tabular(bench_sub: argparse._SubParsersAction) -> None:
    """`lesion bench tabular`: the metadata track at ISIC 2024 scale."""
    tab = bench_sub.add_parser("tabular", help="prepare + select + k-fold LightGBM at ISIC 2024 scale")
    _add_table_size(tab)
    tab.add_argument("--params", default="params.yaml",
                     help="params.yaml whose prepare/train_gbdt/split sections are used (defaults if absent)")
    tab.add_argument("--json", help="also write the figures to this JSON file")
    tab.set_defaults(func=_bench)


def _add_tune(bench_sub: argparse._SubParsersAction) -> None:
    """`lesion bench tune`: one tuning study at ISIC 2024 scale."""
    tu = bench_sub.add_parser("tune", help="a tuning study (nested patient-grouped CV) at ISIC 2024 scale, timed")
    _add_table_size(tu)
    tu.add_argument("--params", default="params.yaml", help="params.yaml (prepare, train_gbdt, split, tune)")
    tu.add_argument("--override", default="examples/tune-gbdt.yaml",
                    help="merged over --params first (default: the example study); '' for none")
    tu.add_argument("--study", default="gbdt", help="the study of tune.studies to run")
    tu.add_argument("--trials", type=int, help="trials per study (default: the study's n_trials)")
    tu.add_argument("--json", help="also write the figures to this JSON file")
    tu.set_defaults(func=_bench_tune)


def _add_scale(bench_sub: argparse._SubParsersAction) -> None:
    """`lesion bench scale`: the whole pipeline on an ISIC 2024-size set."""
    sc = bench_sub.add_parser("scale", help="the whole dvc repro on an ISIC 2024-size set, stage by stage, "
                              "then lesion predict on every image")
    sc.add_argument("--data", required=True, help="ISIC 2024-format folder (lesion synth --full-size --out DIR)")
    sc.add_argument("--workdir", required=True, help="folder for the pipeline run (kept; rerun to continue)")
    sc.add_argument("--repo", default=".", help="the lesion-ml repository whose pipeline runs (default .)")
    sc.add_argument("--overrides", default="params.scale.yaml", help="scale profile merged into params.yaml")
    sc.add_argument("--predict-workers", type=int, default=1, help="lesion predict --workers (default 1)")
    sc.add_argument("--predict-batch", type=int, default=256, help="lesion predict --batch-size (default 256)")
    sc.add_argument("--json", default=str(cat.SCALE), help=f"figures (default {cat.SCALE})")
    sc.add_argument("--predict-only", action="store_true", help="keep the stage figures of --json from a "
                    "finished run in --workdir; run only lesion predict again")
    sc.set_defaults(func=_bench_scale)


def _add_curve(bench_sub: argparse._SubParsersAction) -> None:
    """`lesion bench curve`: a recipe's learning curve on nested subsets of a labelled folder."""
    cu = bench_sub.add_parser("curve", help="a real-data recipe on nested subsets (e.g. 400, 1,000, 2,000 "
                              "images): out-of-fold and external ROC-AUC, as `make run` runs it")
    cu.add_argument("--data", required=True, help="labelled image folder with labels.csv (e.g. ../shared/data/ham10000-2000)")
    cu.add_argument("--external", required=True, help="the folder of the recipe's one validate set "
                    "(e.g. ../shared/data/isic-uda1-555); never trained on")
    cu.add_argument("--recipe", default="examples/ham10000-2000.yaml", help="override file merged into params.yaml")
    cu.add_argument("--sizes", type=int, nargs="+", default=[400, 1000, 2000], help="subset sizes in images")
    cu.add_argument("--seed", type=int, default=0, help="the subsets' order (default 0)")
    cu.add_argument("--group", default="lesion_id", help="labels column keeping a lesion's images together "
                    "('' for none; default lesion_id)")
    cu.add_argument("--workdir", required=True, help="folder for the subsets and one run per size (kept)")
    cu.add_argument("--repo", default=".", help="the lesion-ml repository whose pipeline runs (default .)")
    cu.add_argument("--json", default=str(cat.LEARNING_CURVE), help=f"figures (default {cat.LEARNING_CURVE})")
    cu.add_argument("--plot", default=str(cat.LEARNING_CURVE_PLOT), help=f"the plot (default {cat.LEARNING_CURVE_PLOT}; '' for none)")
    cu.set_defaults(func=_bench_curve)


def _add_sites(bench_sub: argparse._SubParsersAction) -> None:
    """`lesion bench sites`: a recipe left one site out."""
    si = bench_sub.add_parser("sites", help="a real-data recipe with one fold per contributing site (leave one "
                              "site out): per-site and pooled out-of-fold ROC-AUC, without the external set")
    si.add_argument("--data", required=True, help="labelled image folder with labels.csv (e.g. ../shared/data/ham10000-2000)")
    si.add_argument("--recipe", default="examples/ham10000-2000.yaml", help="override file merged into params.yaml")
    si.add_argument("--site", default="ham_dataset", help="labels column naming each image's site (default ham_dataset)")
    si.add_argument("--group", default="lesion_id", help="labels column the intervals resample ('' for images; "
                    "default lesion_id)")
    si.add_argument("--workdir", required=True, help="folder for the run (kept)")
    si.add_argument("--repo", default=".", help="the lesion-ml repository whose pipeline runs (default .)")
    si.add_argument("--json", default=str(cat.LEAVE_ONE_SITE_OUT), help=f"figures (default {cat.LEAVE_ONE_SITE_OUT})")
    si.set_defaults(func=_bench_sites)


def _add_train(bench_sub: argparse._SubParsersAction) -> None:
    """`lesion bench train`: image-model train-step and inference rates."""
    tr = bench_sub.add_parser("train", help="image-model train-step rate: bare vs through our loader, plus inference")
    tr.add_argument("--backbone", default="resnet18", choices=BACKBONE_NAMES, help="the network (default resnet18)")
    tr.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    tr.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    tr.add_argument("--steps", type=int, default=8, help="timed steps per measurement (default 8)")
    tr.add_argument("--rounds", type=int, default=3, help="alternating bare/end-to-end rounds; medians reported")
    tr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where to train; auto: CUDA when present, else the CPU")
    tr.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    tr.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    tr.add_argument("--data", help="an ISIC 2024-format folder to read images from (default: generated demo tiles)")
    tr.add_argument("--json", help="also write the figures to this JSON file")
    tr.set_defaults(func=_bench_train)


def _add_loader(bench_sub: argparse._SubParsersAction) -> None:
    """`lesion bench loader`: the image input path, part by part and by worker count."""
    lo = bench_sub.add_parser("loader", help="the image input path, part by part, and loaders of 0, 1, 2, ... workers")
    lo.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    lo.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    lo.add_argument("--images", type=int, default=512, help="images per pass (default 512)")
    lo.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts (default 0 1 2)")
    lo.add_argument("--epochs", type=int, default=3, help="passes per loader (default 3)")
    lo.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where the batches go; auto: CUDA when present, else the CPU")
    lo.add_argument("--data", help="an ISIC 2024-format folder to read images from (default: generated demo tiles)")
    lo.add_argument("--json", help="also write the figures to this JSON file")
    lo.set_defaults(func=_bench_loader)


def _add_all(bench_sub: argparse._SubParsersAction) -> None:
    """`lesion bench all`: every benchmark, one table."""
    al = bench_sub.add_parser("all", help="every benchmark, one table (tabular, image input, train steps, dvc)")
    al.add_argument("--backbones", nargs="+", default=list(BENCH_BACKBONES), choices=BACKBONE_NAMES,
                    help="networks whose train steps are timed (default " + " ".join(BENCH_BACKBONES) + ")")
    al.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    al.add_argument("--rows", type=int, default=401_059, help="rows of the tabular benchmark")
    al.add_argument("--repo", default=".", help="repository whose no-op `dvc repro` is timed")
    al.add_argument("--params", default="params.yaml", help="params.yaml whose prepare/train_gbdt/split sections "
                    "the tabular part uses (defaults if absent)")
    al.add_argument("--steps", type=int, default=6, help="timed training steps per round of each backbone (default 6)")
    al.add_argument("--rounds", type=int, default=3, help="rounds of the training benchmark (default 3)")
    al.add_argument("--images", type=int, default=400, help="demo tiles of the image input benchmark (default 400)")
    al.add_argument("--json", help="also write the figures to this JSON file")
    al.set_defaults(func=_bench_all)


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    """`lesion bench` and its subcommands (in the order `lesion bench --help` lists them)."""
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    _add_tabular(bench_sub)
    _add_tune(bench_sub)
    _add_scale(bench_sub)
    _add_curve(bench_sub)
    _add_sites(bench_sub)
    _add_train(bench_sub)
    _add_loader(bench_sub)
    _add_all(bench_sub)


__all__ = ["add_bench_commands"]
