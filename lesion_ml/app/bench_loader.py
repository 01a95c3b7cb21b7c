"""`lesion bench loader`: the training input path, part by part, and loaders of 0, 1, 2, ... workers.

Split from `lesion_ml.app.bench` (which re-exports `bench_loader` and `format_loader_table`): the
per-part timing, the loader passes, and the side-by-side processes that give a machine's ceiling.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from lesion_ml.image.loaders import LesionImages, SeededSampler

_SERIAL_PARTS = ("read", "decode", "transform", "collate")  # the per-sample path a serial loader runs


def _timed(steps: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    """Run `fn`, its unrounded seconds to `steps[name]`."""
    start = time.perf_counter()
    out = fn()
    steps[name] = time.perf_counter() - start
    return out


def _copy_to_device(batches: list[dict[str, Any]], dev: Any) -> None:
    """Copy every batch's images to `dev` (waiting for CUDA to finish)."""
    import torch

    for b in batches:
        b["image"].to(dev, non_blocking=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _part_costs(store: Any, ids: list[str], labels: np.ndarray, size: int, batch_size: int, dev: Any,
                seed: int) -> dict[str, float]:
    """Microseconds per image of each part (read, decode, transform, collate, to_device), timed one
    after another over all of `ids` in this process."""
    import torch

    from lesion_ml.data.images import decode_image
    from lesion_ml.image.augment import create_transforms, reseed
    from lesion_ml.image.loaders import collate_samples

    transform = create_transforms(size, True)
    reseed(transform, seed)
    parts: dict[str, float] = {}
    blobs = _timed(parts, "read", lambda: [store.read_bytes(i) for i in ids])
    images = _timed(parts, "decode", lambda: [decode_image(b, i, size) for b, i in zip(blobs, ids)])
    tensors = _timed(parts, "transform", lambda: [transform(image=im)["image"] for im in images])
    samples = [{"image": t, "label": torch.tensor(y)} for t, y in zip(tensors, labels)]
    batches = _timed(parts, "collate", lambda: [collate_samples(samples[i:i + batch_size])
                                                for i in range(0, len(samples), batch_size)])
    if dev.type == "cuda":
        batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
    _timed(parts, "to_device", lambda: _copy_to_device(batches, dev))
    return {k: round(v / len(ids) * 1e6, 1) for k, v in parts.items()}


def _dataset(store: Any, ids: list[str], labels: np.ndarray, size: int) -> LesionImages:
    """The training dataset over `ids`, with its own training transforms."""
    from lesion_ml.image.augment import create_transforms
    from lesion_ml.image.loaders import LesionImages

    return LesionImages(store, ids, labels, create_transforms(size, True), min_side=size)


def _sampler(labels: np.ndarray, seed: int) -> SeededSampler:
    """The training loop's sampler: every image once per pass, per-sample augmentation seeds."""
    from lesion_ml.image.balance import EpochSampler
    from lesion_ml.image.loaders import SeededSampler

    return SeededSampler(EpochSampler(labels, "none", 0.0, seed), seed)


def _passes(loader: DataLoader, smp: SeededSampler, epochs: int) -> tuple[float, list[float]]:
    """`epochs` passes over `loader`: the seconds from creating the first pass to its first batch,
    and each pass's images/s."""
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


def _loader_rates(store: Any, ids: list[str], labels: np.ndarray, size: int, batch_size: int,
                  workers: tuple[int, ...], dev: Any, epochs: int, seed: int) -> dict[str, dict[str, float]]:
    """For each worker count: the training loop's loader (persistent workers) and the same loader
    without persistent workers, over `epochs` passes each."""
    from torch.utils.data import DataLoader

    from lesion_ml.image.loaders import collate_samples, loader_worker_init, make_loader

    loaders = {}
    for w in workers:
        smp = _sampler(labels, seed)
        startup, rates = _passes(make_loader(_dataset(store, ids, labels, size), batch_size, w, dev, smp,
                                             drop_last=True), smp, epochs)
        smp2 = _sampler(labels, seed)
        plain = DataLoader(_dataset(store, ids, labels, size), batch_size=batch_size, sampler=smp2, drop_last=True,
                           num_workers=w, pin_memory=dev.type == "cuda", persistent_workers=False,
                           collate_fn=collate_samples, worker_init_fn=loader_worker_init if w else None)
        _, fresh = _passes(plain, smp2, epochs)
        loaders[str(w)] = {"startup_s": round(startup, 3), "first_pass": round(rates[0], 1),
                           "later_passes": round(float(np.median(rates[1:] or rates)), 1),
                           "without_persistent_workers": round(float(np.median(fresh)), 1)}
    return loaders


def _side_by_side_medians(store: Any, ids: list[str], size: int, workers: tuple[int, ...], epochs: int,
                          seed: int) -> dict[str, dict[str, Any]]:
    """`_side_by_side` for 1 and each worker count, in `epochs` alternating rounds: the medians, and
    each count's combined rate against one process alone (`gain_vs_1`)."""
    counts = sorted({1, *workers} - {0})
    rounds = [{str(w): _side_by_side(store, ids, size, w, seed) for w in counts} for _ in range(epochs)]
    side_by_side = {str(w): {"images_per_s": round(float(np.median([r[str(w)]["images_per_s"] for r in rounds])), 1),
                             "per_image_us": {k: round(float(np.median([r[str(w)]["per_image_us"][k]
                                                                        for r in rounds])), 1)
                                              for k in rounds[0][str(w)]["per_image_us"]}}
                    for w in counts}
    for v in side_by_side.values():
        v["gain_vs_1"] = round(v["images_per_s"] / side_by_side["1"]["images_per_s"], 3)
    return side_by_side


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

    from lesion_ml.config import DataConfig, SyntheticConfig
    from lesion_ml.data.sources import ingest
    from lesion_ml.data.synthetic import generate_synthetic
    from lesion_ml.image.inference import select_device

    dev = select_device(device)
    with tempfile.TemporaryDirectory(prefix="lesion-bench-") as tmp:
        if data_dir is None:
            data_dir = Path(tmp)
            generate_synthetic(data_dir, SyntheticConfig(n_patients=max(8, n_images // 8 + 4),
                                                         lesions_per_patient=(8, 10), seed=seed))
        ing = ingest(DataConfig(source="isic2024", path=str(data_dir)), data_dir)
        ids = ing.table["image_id"].tolist()[:n_images]
        labels = ing.table["target"].to_numpy()[: len(ids)].astype(np.float32)
        per_image_us = _part_costs(ing.store, ids, labels, size, batch_size, dev, seed)
        side_by_side = _side_by_side_medians(ing.store, ids, size, workers, epochs, seed)
        loaders = _loader_rates(ing.store, ids, labels, size, batch_size, workers, dev, epochs, seed)
        ing.store.close()
    serial = sum(per_image_us[k] for k in _SERIAL_PARTS)
    return {"size": size, "batch_size": batch_size, "images": len(ids), "device": str(dev), "epochs": epochs,
            "threads": torch.get_num_threads(), "per_image_us": per_image_us,
            "serial_images_per_s": round(1e6 / serial, 1), "loaders": loaders, "side_by_side": side_by_side}


def _sample_parts(store, ids: list[str], size: int, seed: int, out) -> None:
    """One side-by-side process: read, decode and transform every image of `ids` (a warm-up pass
    first), then put (seconds, microseconds per image by part) on `out`. OpenCV was set to one
    thread before the fork (resizing its pool in a forked child hangs)."""
    import torch

    from lesion_ml.data.images import decode_image
    from lesion_ml.image.augment import create_transforms, reseed

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


__all__ = ["bench_loader", "format_loader_table"]
