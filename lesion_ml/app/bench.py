"""Benchmarks that print figures: the tabular pipeline at ISIC 2024 scale, and image-model throughput.

Times each step of prepare + select + 5-fold LightGBM on generated metadata with the real
file's shape (401,059 rows, 1,042 patients, 393 malignant, 55 columns), reports the process's
peak resident memory and the out-of-fold ROC-AUC / partial AUC. The image-model and loader
benchmarks live in `lesion_ml.app.bench_train` and `lesion_ml.app.bench_loader` and are re-exported here.
"""
from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lesion_ml.app.bench_loader import bench_loader, format_loader_table  # re-exported: `lesion bench loader`
from lesion_ml.app.bench_train import bench_train, format_train_table  # re-exported: `lesion bench train`
from lesion_ml.config import PrepareConfig, SplitConfig, TrainGbdtConfig
from lesion_ml.config.cnn import BENCH_BACKBONES
from lesion_ml.data.split import assign_folds
from lesion_ml.data.synthetic_tabular import generate_metadata
from lesion_ml.evaluate.metrics import partial_auc
from lesion_ml.tabular.gbdt import fit_gbdt, predict_gbdt
from lesion_ml.tabular.prepare import clean_metadata, fit_transform_fold


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(steps: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    steps[name] = round(steps.get(name, 0.0) + time.perf_counter() - start, 2)
    return out


def bench_tabular(n_rows: int = 401_059, n_patients: int = 1_042, malignant: int = 393, seed: int = 0,
                  prepare: PrepareConfig | None = None, gbdt: TrainGbdtConfig | None = None,
                  split: SplitConfig | None = None) -> dict[str, Any]:
    """Run and time the metadata track once.

    Returns:
        A dict with the sizes, `seconds` per step (generate, clean_engineer, split,
        fit_transform_folds = impute + clip + encode + select over all folds, gbdt_folds),
        `prepare_select_s` (clean_engineer + fit_transform_folds), `peak_rss_mib`,
        `n_features_in` / `n_candidates` / `n_selected`, and OOF `roc_auc` and `pauc_80`.
    """
    prepare, gbdt, split = prepare or PrepareConfig(), gbdt or TrainGbdtConfig(), split or SplitConfig()
    steps: dict[str, float] = {}
    meta = _timed(steps, "generate", lambda: generate_metadata(n_rows, n_patients, malignant / n_rows, seed))
    table = meta.rename(columns={"isic_id": "image_id"}).assign(source="bench")
    features = _timed(steps, "clean_engineer", lambda: clean_metadata(table, prepare.features))
    folds = _timed(steps, "split", lambda: assign_folds(table, split))
    y = table["target"].to_numpy()
    oof = np.zeros(len(table))
    names: list[str] = []
    for k in range(split.n_folds):
        train = (folds["fold"] != k).to_numpy()
        X, names, _ = _timed(steps, "fit_transform_folds",  # noqa: N806
                             lambda: fit_transform_fold(features, table["target"], train, prepare))
        model = _timed(steps, "gbdt_folds", lambda: fit_gbdt(X[train], y[train], gbdt))
        oof[~train] = _timed(steps, "gbdt_folds", lambda: predict_gbdt(model, X[~train]))
    from sklearn.metrics import roc_auc_score

    return {
        "rows": int(len(table)), "patients": int(table["patient_id"].nunique()), "malignant": int(y.sum()),
        "n_features_in": int(meta.shape[1]), "n_candidates": int(features.shape[1]), "n_selected": len(names),
        "seconds": steps,
        "prepare_select_s": round(steps["clean_engineer"] + steps["fit_transform_folds"], 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "roc_auc": round(float(roc_auc_score(y, oof)), 4), "pauc_80": round(partial_auc(y, oof), 4),
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text report of `bench_tabular`'s result."""
    lines = [f"tabular bench: {result['rows']:,} rows, {result['patients']:,} patients, "
             f"{result['malignant']} malignant, {result['n_features_in']} columns -> "
             f"{result['n_candidates']} candidates -> {result['n_selected']} selected"]
    lines += [f"  {name:<22}{secs:>9.2f} s" for name, secs in result["seconds"].items()]
    lines += [f"  {'prepare + select':<22}{result['prepare_select_s']:>9.2f} s",
              f"  {'peak RSS':<22}{result['peak_rss_mib'] / 1024:>9.2f} GiB",
              f"  {'OOF ROC-AUC':<22}{result['roc_auc']:>9.4f}",
              f"  {'OOF pAUC (TPR>0.8)':<22}{result['pauc_80']:>9.4f}"]
    return "\n".join(lines)


def bench_images(size: int = 128, n_images: int = 400, seed: int = 0) -> dict[str, Any]:
    """Image input rates on generated demo tiles (JPEG in HDF5): reading the bytes, decoding them,
    and decoding plus the resize and training augmentation that a training sample gets."""
    import tempfile

    from lesion_ml.config import DataConfig, SyntheticConfig
    from lesion_ml.data.images import decode_image
    from lesion_ml.data.sources import ingest
    from lesion_ml.data.synthetic import generate_synthetic
    from lesion_ml.image.augment import create_transforms, reseed

    with tempfile.TemporaryDirectory(prefix="lesion-bench-") as tmp:
        generate_synthetic(Path(tmp), SyntheticConfig(n_patients=max(8, n_images // 9 + 2), lesions_per_patient=(8, 10),
                                                      seed=seed))
        ing = ingest(DataConfig(source="synthetic"), Path(tmp))
        ids = ing.table["image_id"].tolist()[:n_images]
        transform = create_transforms(size, True)
        reseed(transform, seed)
        rates = {}
        start = time.perf_counter()
        blobs = [ing.store.read_bytes(i) for i in ids]
        rates["hdf5_read"] = len(ids) / (time.perf_counter() - start)
        start = time.perf_counter()
        images = [decode_image(b, "bench") for b in blobs]
        rates["decode"] = len(ids) / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in ids:
            transform(image=ing.store.get(i, size))
        rates["read_decode_augment"] = len(ids) / (time.perf_counter() - start)
        ing.store.close()
    side = float(np.median([max(im.shape[:2]) for im in images]))
    return {"images": len(ids), "median_side_px": side, "size": size,
            "images_per_s": {k: round(v, 1) for k, v in rates.items()},
            "augment_vs_decode": round(rates["read_decode_augment"] / rates["decode"], 3)}


def _built(repo: Path) -> str | None:
    """Why `repo`'s pipeline is not built and up to date (None when it is)."""
    import subprocess

    if not (repo / "dvc.lock").is_file():
        return f"no dvc.lock in {repo}: run `make run` first"
    status = subprocess.run([_dvc(), "status", "--quiet"], cwd=repo, capture_output=True, text=True)
    return "the pipeline has changes to reproduce; run `make run` first" if status.returncode else None


def _dvc() -> str:
    import shutil
    import sys

    return shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))


def _noop_dvc_repro(repo: Path) -> dict[str, Any]:
    """Time `dvc repro` in `repo` when its pipeline is up to date (else say why not)."""
    import subprocess

    if note := _built(repo):
        return {"seconds": None, "note": note}
    start = time.perf_counter()
    run = subprocess.run([_dvc(), "repro"], cwd=repo, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 2)
    ok = run.returncode == 0 and "up to date" in run.stdout
    return {"seconds": seconds if ok else None, "note": "nothing reran" if ok else run.stdout[-300:]}


def _cached_pipeline_rerun(repo: Path) -> dict[str, Any]:
    """Time `python -m flows.pipeline` (every stage as one Prefect flow, without DVC) in `repo`
    when its pipeline is up to date: every task should find its cached result (else say why not)."""
    import subprocess
    import sys

    if note := _built(repo):
        return {"seconds": None, "note": note}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=repo, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 2)
    ok = run.returncode == 0 and "tasks run: 0 " in run.stdout
    return {"seconds": seconds if ok else None, "note": "every task cached (Prefect server start included)" if ok
            else (run.stdout + run.stderr)[-300:]}


def bench_all(backbones: tuple[str, ...] = BENCH_BACKBONES, size: int = 128, tabular_rows: int = 401_059, *,
              repo: Path = Path("."), steps: int = 6, rounds: int = 3, batch_size: int = 16,
              n_images: int = 400, tabular: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every benchmark once, in one process, for one table (see `format_all_table`); `tabular`:
    `bench_tabular`'s prepare, gbdt and split configs (defaults when absent)."""
    start = time.perf_counter()
    out: dict[str, Any] = {"tabular": bench_tabular(n_rows=tabular_rows, **(tabular or {}))}
    out["image_input"] = bench_images(size, n_images)
    out["train"] = {b: bench_train(b, size, batch_size, steps, rounds) for b in backbones}
    out["dvc_repro_noop"] = _noop_dvc_repro(repo)
    out["cached_pipeline_rerun"] = _cached_pipeline_rerun(repo)
    out["total_s"] = round(time.perf_counter() - start, 1)
    return out


def format_all_table(r: dict[str, Any]) -> str:
    """One plain-text table of `bench_all`'s result."""
    t, img = r["tabular"], r["image_input"]
    rows = [("tabular: prepare + select", f"{t['prepare_select_s']:.1f} s", f"{t['rows']:,} rows, "
             f"{t['n_features_in']} -> {t['n_selected']} features"),
            ("tabular: 5-fold LightGBM", f"{t['seconds']['gbdt_folds']:.1f} s", f"OOF ROC-AUC {t['roc_auc']:.3f}"),
            ("tabular: peak RSS", f"{t['peak_rss_mib'] / 1024:.2f} GiB", "whole process so far"),
            ("images: HDF5 read", f"{img['images_per_s']['hdf5_read']:.0f} /s", f"{img['images']} demo tiles, "
             f"median {img['median_side_px']:.0f} px"),
            ("images: JPEG decode", f"{img['images_per_s']['decode']:.0f} /s", "raw decode"),
            ("images: read+decode+augment", f"{img['images_per_s']['read_decode_augment']:.0f} /s",
             f"to {img['size']} px; {img['augment_vs_decode']:.2f} x raw decode")]
    for name, b in r["train"].items():
        ips = b["images_per_s"]
        rows.append((f"train {name}", f"{b['ratio_end_to_end_vs_bare']:.3f}",
                     f"end-to-end / bare: {ips['end_to_end']:.1f} / {ips['bare']:.1f} images/s at {b['size']} px"))
        rows.append((f"inference {name}", f"{ips['inference']:.0f} /s", b["device"]))
    for key, label in (("dvc_repro_noop", "no-op dvc repro"), ("cached_pipeline_rerun", "cached pipeline rerun")):
        v = r[key]
        rows.append((label, f"{v['seconds']:.2f} s" if v["seconds"] is not None else "n/a", v["note"]))
    width = max(len(n) for n, _, _ in rows)
    lines = [f"lesion bench all ({r['total_s']:.0f} s)"]
    lines += [f"  {n:<{width}}  {v:>10}  {note}" for n, v, note in rows]
    return "\n".join(lines)


__all__ = ["bench_all", "bench_images", "bench_loader", "bench_tabular", "bench_train", "format_all_table",
           "format_loader_table", "format_table", "format_train_table", "peak_rss_mib"]
