"""`lesion bench train`: image-model throughput, bare and end to end, measured side by side.

Split from `lesion_ml.app.bench` (which re-exports `bench_train` and `format_train_table`): setting
up the loaders and the model, the alternating measured rounds, and the result.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class _TrainRun:
    """What the measured rounds use: the loaders, the in-memory batches and the model with its optimiser."""

    dev: Any
    sampler: Any  # the training loader's, set to each round's epoch
    train_dl: Any
    eval_dl: Any
    input_sampler: Any  # the input-path loaders' (shared), set to each round's epoch
    input_dl: Any
    serial_dl: Any  # the input path with 0 workers; None when the loaders have none
    bare: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None
    opt: Any = None
    sched: Any = None
    loss_fn: Any = None


def _loaders(ing: Any, data_dir: Path, size: int, batch_size: int, n_images: int, n_input: int, num_workers: int,
             dev: Any, seed: int) -> _TrainRun:
    """The loaders training builds (persistent workers, per-sample augmentation seeds) over the
    first `n_images` images, and the input-path loaders over the first `n_input`."""
    from lesion_ml.image.augment import create_transforms
    from lesion_ml.image.balance import EpochSampler
    from lesion_ml.image.loaders import LesionImages, SeededSampler, make_loader

    ids = ing.table["image_id"].tolist()
    if len(ids) < n_images:
        raise ValueError(f"{data_dir}: {len(ids)} images, the benchmark needs batch_size x steps = {n_images}")
    input_ids = ids[:n_input]
    input_labels = ing.table["target"].to_numpy()[:len(input_ids)].astype(np.float32)
    ids = ids[:n_images]
    labels = input_labels[:n_images]
    train_tf = create_transforms(size, True)
    eval_tf = create_transforms(size, False)
    sampler = SeededSampler(EpochSampler(labels, "none", 0.0, seed), seed)
    train_dl = make_loader(LesionImages(ing.store, ids, labels, train_tf, min_side=size), batch_size,
                           num_workers, dev, sampler, drop_last=True)
    eval_dl = make_loader(LesionImages(ing.store, ids, labels, eval_tf, min_side=size), batch_size, num_workers, dev)
    input_sampler = SeededSampler(EpochSampler(input_labels, "none", 0.0, seed), seed)
    input_dl = make_loader(LesionImages(ing.store, input_ids, input_labels, train_tf, min_side=size), batch_size,
                           num_workers, dev, input_sampler, drop_last=True)
    # with workers, the same input path in this process too: their gain, measured side by side
    serial_dl = make_loader(LesionImages(ing.store, input_ids, input_labels, train_tf, min_side=size), batch_size,
                            0, dev, input_sampler, drop_last=True) if num_workers else None
    return _TrainRun(dev, sampler, train_dl, eval_dl, input_sampler, input_dl, serial_dl)


def _bare_batches(batch_size: int, size: int, steps: int, seed: int) -> list[dict[str, Any]]:
    """`steps` batches of random uint8 images and labels, already in memory and in the layout the
    loaders give (channels-last, `loaders.collate_samples`): the model alone."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (batch_size, size, size, 3), generator=gen, dtype=torch.uint8).permute(0, 3, 1, 2),
             "label": (torch.rand(batch_size, generator=gen) < 0.5).float()} for _ in range(steps)]


def _add_model(run: _TrainRun, backbone: str, seed: int) -> None:
    """The network (seeded), its optimiser, a constant schedule and the loss, as training uses them."""
    import torch

    from lesion_ml.config import CnnModelConfig
    from lesion_ml.image.inference import to_device
    from lesion_ml.image.net import LesionNet
    from lesion_ml.image.schedule import make_optimizer

    torch.manual_seed(seed)
    run.model = to_device(LesionNet(backbone, "false"), run.dev)
    cfg = CnnModelConfig(backbone=backbone)
    run.opt = make_optimizer([{"params": list(run.model.parameters()), "lr": cfg.lr}], cfg.weight_decay)
    run.sched = torch.optim.lr_scheduler.LambdaLR(run.opt, lambda _: 1.0)
    run.loss_fn = torch.nn.BCEWithLogitsLoss()


def _train_rate(run: _TrainRun, loader: Any) -> float:
    """Images/s of one pass of training steps (`train_one_epoch`) over `loader`."""
    from lesion_ml.image.train import train_one_epoch

    run.model.train()
    start = time.perf_counter()
    seen = train_one_epoch(run.model, loader, run.opt, run.sched, run.loss_fn, run.dev)["images"]  # float() syncs CUDA
    return seen / (time.perf_counter() - start)


def _input_rate(loader: Any) -> float:
    """Images/s of one pass over `loader`, the input path alone."""
    start = time.perf_counter()
    n = sum(len(b["label"]) for b in loader)
    return n / (time.perf_counter() - start)


def _measure(run: _TrainRun, rounds: int, cv2_threads: int) -> dict[str, list[float]]:
    """Images/s per round: bare and end-to-end train steps back to back, the input path (with and,
    given workers, without them) and inference; after one warm-up."""
    import cv2

    from lesion_ml.image.inference import predict

    _train_rate(run, run.bare[:2])  # warm-up: allocator, cuDNN autotuning, first-call overheads
    rates: dict[str, list[float]] = {"bare": [], "end_to_end": [], "input_only": [], "inference": []}
    if run.serial_dl is not None:
        rates["input_only_0_workers"] = []
    for r in range(rounds):
        run.sampler.set_epoch(r)
        rates["bare"].append(_train_rate(run, run.bare))
        rates["end_to_end"].append(_train_rate(run, run.train_dl))
        run.input_sampler.set_epoch(r)
        rates["input_only"].append(_input_rate(run.input_dl))
        if run.serial_dl is not None:  # as a 0-worker run decodes: OpenCV with its own default threads
            cv2.setNumThreads(cv2_threads)
            rates["input_only_0_workers"].append(_input_rate(run.serial_dl))
            cv2.setNumThreads(1)
        start = time.perf_counter()
        n = len(predict(run.model, run.eval_dl, run.dev))
        rates["inference"].append(n / (time.perf_counter() - start))
    return rates


def _train_result(settings: dict[str, Any], rates: dict[str, list[float]]) -> dict[str, Any]:
    """`bench_train`'s result: the settings, the medians and ratios, and every round's rates."""
    med = {k: round(float(np.median(v)), 2) for k, v in rates.items()}
    return {**settings,
            "images_per_s": med, "ratio_end_to_end_vs_bare": round(med["end_to_end"] / med["bare"], 3),
            # the gain: the median of each round's ratio (both passes back to back, so noise that
            # lasts a round hits both alike)
            **({"input_gain_vs_0_workers": round(float(np.median(np.divide(rates["input_only"],
                                                                           rates["input_only_0_workers"]))), 3)}
               if "input_only_0_workers" in rates else {}),
            "per_round": {k: [round(x, 2) for x in v] for k, v in rates.items()}}


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

    import cv2
    import torch

    from lesion_ml.config import DataConfig, SyntheticConfig
    from lesion_ml.data.sources import ingest
    from lesion_ml.data.synthetic import generate_synthetic
    from lesion_ml.image.inference import select_device

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
        run = _loaders(ing, data_dir, size, batch_size, n_images, n_input, num_workers, dev, seed)
        run.bare = _bare_batches(batch_size, size, steps, seed)
        _add_model(run, backbone, seed)
        rates = _measure(run, rounds, cv2_threads)
        ing.store.close()
    settings = {"backbone": backbone, "size": size, "batch_size": batch_size, "steps": steps, "rounds": rounds,
                "input_images": n_input,
                "device": str(dev), "threads": torch.get_num_threads(), "num_workers": num_workers}
    return _train_result(settings, rates)


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


__all__ = ["bench_train", "format_train_table"]
