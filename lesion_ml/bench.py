"""Benchmarks that print figures: the tabular pipeline at ISIC 2024 scale, and image-model throughput.

Times each step of prepare + select + 5-fold LightGBM on generated metadata with the real
file's shape (401,059 rows, 1,042 patients, 393 malignant, 55 columns), reports the process's
peak resident memory and the out-of-fold ROC-AUC / partial AUC.
"""
from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


from lesion_ml.config import PrepareConfig, SplitConfig, TrainGbdtConfig
from lesion_ml.data.synthetic_tabular import generate_metadata
from lesion_ml.evaluate.metrics import partial_auc
from lesion_ml.models.gbdt import fit_gbdt, predict_gbdt
from lesion_ml.split import assign_folds
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


def bench_train(backbone: str = "resnet18", size: int = 128, batch_size: int = 32, steps: int = 8, rounds: int = 3,
                device: str = "auto", num_workers: int = 0, data_dir: Path | None = None,
                seed: int = 0) -> dict[str, Any]:
    """Image-model throughput, bare and end to end, measured side by side in one process.

    Each round times `steps` training steps twice with the same step code (`train_one_epoch`):
    once on batches of random tensors already in memory ("bare": the model alone), once
    through the real input path ("end_to_end": the image store's JPEG decode, the training
    augmentation, collation). Rounds alternate the two so that machine noise hits both alike;
    the medians are reported. Also times the input path alone (one pass of at least 32
    batches, `input_images`: a loader's steady rate, not its queues filling and draining) and
    inference (eval transforms, no gradients).

    Args:
        data_dir: an ISIC 2024-format folder (train-image.hdf5 + metadata); default: a demo
            set generated into a temporary folder.
    """
    import tempfile

    import torch

    from lesion_ml.augment import create_transforms
    from lesion_ml.config import CnnModelConfig, DataConfig, SyntheticConfig
    from lesion_ml.data.sources import ingest
    from lesion_ml.data.synthetic import generate_synthetic
    from lesion_ml.models.net import LesionNet
    from lesion_ml.balance import EpochSampler
    from lesion_ml.train import (LesionImages, SeededSampler, make_loader, predict, select_device, to_device,
                                 train_one_epoch)

    import cv2

    dev = select_device(device)
    n_images = batch_size * steps
    # the input path alone is timed over one longer pass (at least 32 batches): a loader's rate
    # at the start and end of a pass (workers filling and draining their queues) is not its rate
    n_input = max(n_images, batch_size * 32)
    cv2_threads = cv2.getNumThreads()
    with tempfile.TemporaryDirectory(prefix="lesion-bench-") as tmp:
        if data_dir is None:
            data_dir = Path(tmp)
            n_patients = max(8, n_input // 8 + 4)
            generate_synthetic(data_dir, SyntheticConfig(n_patients=n_patients, lesions_per_patient=(8, 10), seed=seed))
        ing = ingest(DataConfig(source="isic2024", path=str(data_dir)), data_dir)
        ids = ing.table["image_id"].tolist()
        if len(ids) < n_images:
            raise ValueError(f"{data_dir}: {len(ids)} images, the benchmark needs batch_size x steps = {n_images}")
        input_ids = ids[:n_input]
        input_labels = ing.table["target"].to_numpy()[:len(input_ids)].astype(np.float32)
        ids = ids[:n_images]
        labels = input_labels[:n_images]
        train_tf = create_transforms(size, True)
        eval_tf = create_transforms(size, False)
        # the loaders training builds: persistent workers, per-sample augmentation seeds
        sampler = SeededSampler(EpochSampler(labels, "none", seed=seed), seed)
        train_dl = make_loader(LesionImages(ing.store, ids, labels, train_tf, min_side=size), batch_size,
                               num_workers, dev, sampler, drop_last=True)
        eval_dl = make_loader(LesionImages(ing.store, ids, labels, eval_tf, min_side=size), batch_size, num_workers, dev)
        input_sampler = SeededSampler(EpochSampler(input_labels, "none", seed=seed), seed)
        input_dl = make_loader(LesionImages(ing.store, input_ids, input_labels, train_tf, min_side=size), batch_size,
                               num_workers, dev, input_sampler, drop_last=True)
        # with workers, the same input path in this process too: their gain, measured side by side
        serial_dl = make_loader(LesionImages(ing.store, input_ids, input_labels, train_tf, min_side=size), batch_size,
                                0, dev, input_sampler, drop_last=True) if num_workers else None
        gen = torch.Generator().manual_seed(seed)
        bare = [{"image": torch.randint(0, 256, (batch_size, 3, size, size), generator=gen, dtype=torch.uint8),
                 "label": (torch.rand(batch_size, generator=gen) < 0.5).float()} for _ in range(steps)]
        torch.manual_seed(seed)
        model = to_device(LesionNet(backbone, "false"), dev)
        cfg = CnnModelConfig(backbone=backbone)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        loss_fn = torch.nn.BCEWithLogitsLoss()

        def train_rate(loader) -> float:
            model.train()
            start = time.perf_counter()
            seen = train_one_epoch(model, loader, opt, sched, loss_fn, dev)["images"]  # float() syncs CUDA
            return seen / (time.perf_counter() - start)

        train_rate(bare[:2])  # warm-up: allocator, cuDNN autotuning, first-call overheads
        rates: dict[str, list[float]] = {"bare": [], "end_to_end": [], "input_only": [], "inference": []}
        if serial_dl is not None:
            rates["input_only_0_workers"] = []
        for r in range(rounds):
            sampler.set_epoch(r)
            rates["bare"].append(train_rate(bare))
            rates["end_to_end"].append(train_rate(train_dl))
            input_sampler.set_epoch(r)
            start = time.perf_counter()
            n = sum(len(b["label"]) for b in input_dl)
            rates["input_only"].append(n / (time.perf_counter() - start))
            if serial_dl is not None:  # as a 0-worker run decodes: OpenCV with its own default threads
                cv2.setNumThreads(cv2_threads)
                start = time.perf_counter()
                n = sum(len(b["label"]) for b in serial_dl)
                rates["input_only_0_workers"].append(n / (time.perf_counter() - start))
                cv2.setNumThreads(1)
            start = time.perf_counter()
            n = len(predict(model, eval_dl, dev))
            rates["inference"].append(n / (time.perf_counter() - start))
        ing.store.close()
    med = {k: round(float(np.median(v)), 2) for k, v in rates.items()}
    return {"backbone": backbone, "size": size, "batch_size": batch_size, "steps": steps, "rounds": rounds,
            "input_images": n_input,
            "device": str(dev), "threads": torch.get_num_threads(), "num_workers": num_workers,
            "images_per_s": med, "ratio_end_to_end_vs_bare": round(med["end_to_end"] / med["bare"], 3),
            # the gain: the median of each round's ratio (both passes back to back, so noise that
            # lasts a round hits both alike)
            **({"input_gain_vs_0_workers": round(float(np.median(np.divide(rates["input_only"],
                                                                           rates["input_only_0_workers"]))), 3)}
               if serial_dl is not None else {}),
            "per_round": {k: [round(x, 2) for x in v] for k, v in rates.items()}}


def bench_loader(size: int = 128, batch_size: int = 32, n_images: int = 512, workers: tuple[int, ...] = (0, 1, 2),
                 device: str = "auto", data_dir: Path | None = None, epochs: int = 3, seed: int = 0) -> dict[str, Any]:
    """Profile the training input path: what each part costs per image, and what loaders with 0, 1,
    2, ... workers deliver.

    Parts, timed one after another in this process over `n_images` images (microseconds per
    image): `read` (the encoded bytes from the store: HDF5 or file), `decode` (JPEG/PNG to RGB at
    the reduced scale the model's size allows), `transform` (resize, training augmentation,
    normalisation, tensor), `collate` (stacking samples into a batch) and `to_device` (the
    host-to-device copy of a batch, pinned memory on CUDA; a no-op copy on CPU).

    Loaders: for each worker count, the loader the training loop builds (`make_loader`: persistent
    workers) over `epochs` passes, reporting the start-up (creating the loader to its first
    batch), the first pass and the later passes in images/s; and the same loader without
    persistent workers (start-up paid on every pass, as every epoch and evaluation pass paid it
    before), for comparison.

    Side by side: the machine's own ceiling for w workers. w plain processes (forked, one OpenCV
    and one torch thread each, no DataLoader, no batches) each run the per-sample path (read,
    decode, transform) over all the images at once; their combined rate against one such
    process alone, in the same run (`epochs` alternating rounds, medians). A loader cannot beat
    this; where it falls short of w x, the parts themselves slow down when w of them run at once
    (shared caches, memory bandwidth, the host's other tenants), which each entry's
    `per_image_us` shows part by part.

    Args:
        data_dir: an ISIC 2024-format folder; default: a demo set generated into a temporary folder.
    """
    import tempfile

    import torch
    from torch.utils.data import DataLoader, default_collate

    from lesion_ml.augment import create_transforms, reseed
    from lesion_ml.balance import EpochSampler
    from lesion_ml.config import DataConfig, SyntheticConfig
    from lesion_ml.data.images import decode_image
    from lesion_ml.data.sources import ingest
    from lesion_ml.data.synthetic import generate_synthetic
    from lesion_ml.train import LesionImages, SeededSampler, loader_worker_init, make_loader, select_device

    dev = select_device(device)
    with tempfile.TemporaryDirectory(prefix="lesion-bench-") as tmp:
        if data_dir is None:
            data_dir = Path(tmp)
            generate_synthetic(data_dir, SyntheticConfig(n_patients=max(8, n_images // 8 + 4),
                                                         lesions_per_patient=(8, 10), seed=seed))
        ing = ingest(DataConfig(source="isic2024", path=str(data_dir)), data_dir)
        ids = ing.table["image_id"].tolist()[:n_images]
        labels = ing.table["target"].to_numpy()[: len(ids)].astype(np.float32)
        transform = create_transforms(size, True)
        reseed(transform, seed)
        parts: dict[str, float] = {}

        def _timed(steps: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:  # unrounded seconds
            start = time.perf_counter()
            out = fn()
            steps[name] = time.perf_counter() - start
            return out

        blobs = _timed(parts, "read", lambda: [ing.store.read_bytes(i) for i in ids])
        images = _timed(parts, "decode", lambda: [decode_image(b, i, size) for b, i in zip(blobs, ids)])
        tensors = _timed(parts, "transform", lambda: [transform(image=im)["image"] for im in images])
        samples = [{"image": t, "label": torch.tensor(y)} for t, y in zip(tensors, labels)]
        batches = _timed(parts, "collate", lambda: [default_collate(samples[i:i + batch_size])
                                                    for i in range(0, len(samples), batch_size)])
        if dev.type == "cuda":
            batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]

        def copy() -> None:
            for b in batches:
                b["image"].to(dev, non_blocking=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()

        _timed(parts, "to_device", copy)
        per_image_us = {k: round(v / len(ids) * 1e6, 1) for k, v in parts.items()}

        def dataset() -> LesionImages:
            return LesionImages(ing.store, ids, labels, create_transforms(size, True), min_side=size)

        def sampler() -> SeededSampler:
            return SeededSampler(EpochSampler(labels, "none", seed=seed), seed)

        def passes(loader: DataLoader, smp: SeededSampler) -> tuple[float, list[float]]:
            rates, startup = [], 0.0
            for epoch in range(epochs):
                smp.set_epoch(epoch)
                start = time.perf_counter()
                it = iter(loader)
                first = next(it)
                if epoch == 0:
                    startup = time.perf_counter() - start
                n = len(first["label"]) + sum(len(b["label"]) for b in it)
                rates.append(n / (time.perf_counter() - start))
            return startup, rates

        counts = sorted({1, *workers} - {0})
        rounds = [{str(w): _side_by_side(ing.store, ids, size, w, seed) for w in counts} for _ in range(epochs)]
        side_by_side = {str(w): {"images_per_s": round(float(np.median([r[str(w)]["images_per_s"] for r in rounds])), 1),
                                 "per_image_us": {k: round(float(np.median([r[str(w)]["per_image_us"][k]
                                                                            for r in rounds])), 1)
                                                  for k in rounds[0][str(w)]["per_image_us"]}}
                        for w in counts}

        loaders = {}
        for w in workers:
            smp = sampler()
            startup, rates = passes(make_loader(dataset(), batch_size, w, dev, smp, drop_last=True), smp)
            smp2 = sampler()
            plain = DataLoader(dataset(), batch_size=batch_size, sampler=smp2, drop_last=True, num_workers=w,
                               pin_memory=dev.type == "cuda", persistent_workers=False,
                               worker_init_fn=loader_worker_init if w else None)
            _, fresh = passes(plain, smp2)
            loaders[str(w)] = {"startup_s": round(startup, 3), "first_pass": round(rates[0], 1),
                               "later_passes": round(float(np.median(rates[1:] or rates)), 1),
                               "without_persistent_workers": round(float(np.median(fresh)), 1)}
        ing.store.close()
    serial = sum(per_image_us[k] for k in ("read", "decode", "transform", "collate"))
    for v in side_by_side.values():
        v["gain_vs_1"] = round(v["images_per_s"] / side_by_side["1"]["images_per_s"], 3)
    return {"size": size, "batch_size": batch_size, "images": len(ids), "device": str(dev), "epochs": epochs,
            "threads": torch.get_num_threads(), "per_image_us": per_image_us,
            "serial_images_per_s": round(1e6 / serial, 1), "loaders": loaders, "side_by_side": side_by_side}


def _sample_parts(store, ids: list[str], size: int, seed: int, out) -> None:
    """One side-by-side process: read, decode and transform every image of `ids` (a warm-up pass
    first), then put (seconds, microseconds per image by part) on `out`. OpenCV was set to one
    thread before the fork (resizing its pool in a forked child hangs)."""
    import torch

    from lesion_ml.augment import create_transforms, reseed
    from lesion_ml.data.images import decode_image

    torch.set_num_threads(1)
    transform = create_transforms(size, True)
    for i in ids:  # opens the store in this process and finds each image's extent, as a
        store.read_bytes(i)  # persistent loader worker has after its first pass
    for i in ids[:32]:  # first-call overheads
        transform(image=decode_image(store.read_bytes(i), i, size))
    parts = {"read": 0.0, "decode": 0.0, "transform": 0.0}
    start = time.perf_counter()
    for k, i in enumerate(ids):
        t0 = time.perf_counter()
        data = store.read_bytes(i)
        t1 = time.perf_counter()
        image = decode_image(data, i, size)
        t2 = time.perf_counter()
        reseed(transform, seed + k)
        transform(image=image)
        t3 = time.perf_counter()
        parts["read"] += t1 - t0
        parts["decode"] += t2 - t1
        parts["transform"] += t3 - t2
    out.put((time.perf_counter() - start, {k: v / len(ids) * 1e6 for k, v in parts.items()}))


def _side_by_side(store, ids: list[str], size: int, processes: int, seed: int) -> dict[str, Any]:
    """`processes` forked processes run `_sample_parts` over all of `ids` at once: their combined
    images/s (each image counted once per process) and the mean microseconds per image by part."""
    import multiprocessing as mp

    import cv2

    ctx = mp.get_context("fork")
    out = ctx.Queue()
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    procs = [ctx.Process(target=_sample_parts, args=(store, ids, size, seed, out)) for _ in range(processes)]
    try:
        for p in procs:
            p.start()
        results = [out.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
        cv2.setNumThreads(threads)
    seconds = max(r[0] for r in results)
    parts = {k: round(float(np.mean([r[1][k] for r in results])), 1) for k in results[0][1]}
    return {"images_per_s": round(processes * len(ids) / seconds, 1), "per_image_us": parts}


def format_loader_table(r: dict[str, Any]) -> str:
    """A plain-text report of `bench_loader`'s result."""
    lines = [f"loader bench: {r['images']} images to {r['size']} px, batch {r['batch_size']}, {r['device']}, "
             f"{r['epochs']} passes per loader"]
    lines += [f"  {name:<12}{us:>10.1f} us/image" for name, us in r["per_image_us"].items()]
    lines.append(f"  {'serial rate':<12}{r['serial_images_per_s']:>10.1f} images/s (read+decode+transform+collate)")
    lines.append(f"  {'workers':>8}{'start-up s':>12}{'1st pass':>10}{'later':>10}{'not persistent':>16}  images/s")
    for w, v in r["loaders"].items():
        lines.append(f"  {w:>8}{v['startup_s']:>12.3f}{v['first_pass']:>10.1f}{v['later_passes']:>10.1f}"
                     f"{v['without_persistent_workers']:>16.1f}")
    if r.get("side_by_side"):
        lines.append("  side by side: w plain processes running read + decode + transform at once (the ceiling "
                     "for w workers)")
        lines.append(f"  {'processes':>9}{'images/s':>10}{'vs 1':>7}   us/image read / decode / transform")
        for w, v in r["side_by_side"].items():
            us = v["per_image_us"]
            lines.append(f"  {w:>9}{v['images_per_s']:>10.1f}{v['gain_vs_1']:>7.2f}   "
                         f"{us['read']:.1f} / {us['decode']:.1f} / {us['transform']:.1f}")
    return "\n".join(lines)


def format_train_table(r: dict[str, Any]) -> str:
    """A plain-text report of `bench_train`'s result."""
    ips = r["images_per_s"]
    return "\n".join([
        f"train bench: {r['backbone']} at {r['size']} px, batch {r['batch_size']}, {r['steps']} steps x "
        f"{r['rounds']} rounds, {r['device']} ({r['threads']} threads, {r['num_workers']} loader workers)",
        f"  {'bare train step':<26}{ips['bare']:>10.1f} images/s",
        f"  {'end-to-end train step':<26}{ips['end_to_end']:>10.1f} images/s",
        f"  {'ratio end-to-end / bare':<26}{r['ratio_end_to_end_vs_bare']:>10.3f}",
        f"  {'input path alone':<26}{ips['input_only']:>10.1f} images/s (decode + augment + collate; a pass of "
        f"{r.get('input_images', r['batch_size'] * r['steps'])} images)",
        f"  {'inference':<26}{ips['inference']:>10.1f} images/s",
    ] + ([f"  {'input path, 0 workers':<26}{ips['input_only_0_workers']:>10.1f} images/s (same run; "
          f"{r['num_workers']} workers give {r['input_gain_vs_0_workers']:.2f} x)"] if "input_gain_vs_0_workers" in r else []))


def bench_images(size: int = 128, n_images: int = 400, seed: int = 0) -> dict[str, Any]:
    """Image input rates on generated demo tiles (JPEG in HDF5): reading the bytes, decoding them,
    and decoding plus the resize and training augmentation that a training sample gets."""
    import tempfile

    from lesion_ml.augment import create_transforms, reseed
    from lesion_ml.config import DataConfig, SyntheticConfig
    from lesion_ml.data.images import decode_image
    from lesion_ml.data.sources import ingest
    from lesion_ml.data.synthetic import generate_synthetic

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


def _noop_dvc_repro(repo: Path) -> dict[str, Any]:
    """Time `dvc repro` in `repo` when its pipeline is up to date (else say why not)."""
    import shutil
    import subprocess
    import sys

    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    if not (repo / "dvc.lock").is_file():
        return {"seconds": None, "note": f"no dvc.lock in {repo}: run `make run` first"}
    status = subprocess.run([dvc, "status", "--quiet"], cwd=repo, capture_output=True, text=True)
    if status.returncode != 0:
        return {"seconds": None, "note": "the pipeline has changes to reproduce; run `make run` first"}
    start = time.perf_counter()
    run = subprocess.run([dvc, "repro"], cwd=repo, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 2)
    ok = run.returncode == 0 and "up to date" in run.stdout
    return {"seconds": seconds if ok else None, "note": "nothing reran" if ok else run.stdout[-300:]}


BENCH_BACKBONES = ("resnet18", "resnet50", "efficientnet-b0", "efficientnet-lite0")


def bench_all(backbones: tuple[str, ...] = BENCH_BACKBONES, size: int = 128, tabular_rows: int = 401_059,
              repo: Path = Path("."), steps: int = 6, rounds: int = 3, batch_size: int = 16) -> dict[str, Any]:
    """Every benchmark once, in one process, for one table (see `format_all_table`)."""
    start = time.perf_counter()
    out: dict[str, Any] = {"tabular": bench_tabular(n_rows=tabular_rows)}
    out["image_input"] = bench_images(size)
    out["train"] = {b: bench_train(b, size, batch_size, steps, rounds) for b in backbones}
    out["dvc_repro_noop"] = _noop_dvc_repro(repo)
    out["cached_pipeline_rerun"] = {"seconds": None, "note": "not measured: there is no cached Prefect "
                                    "pipeline flow yet (a no-op `dvc repro` is the cached rerun today)"}
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
