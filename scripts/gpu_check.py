"""GPU check: one fold of an image backbone on a generated ISIC 2024-format set, with AMP.

Prints the training and inference rates (images/s) and the peak GPU memory. Without a CUDA GPU
it says so and exits 0 after a tiny CPU step of the same code (so the script stays tested).

    python scripts/gpu_check.py [--images 20000] [--backbone efficientnet-b0] [--size 128]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lesion_ml.config import CnnModelConfig, DataConfig, SplitConfig, SyntheticConfig  # noqa: E402
from lesion_ml.data.sources import ingest  # noqa: E402
from lesion_ml.data.synthetic import generate_synthetic  # noqa: E402
from lesion_ml.split import assign_folds  # noqa: E402
from lesion_ml.train import FoldData, select_device, to_device, train_fold  # noqa: E402

LESIONS_PER_PATIENT = (4, 14)


def _shard(args: tuple[Path, int, int]) -> Path:
    out, n_patients, seed = args
    generate_synthetic(out, SyntheticConfig(n_patients=n_patients, seed=seed, lesions_per_patient=LESIONS_PER_PATIENT))
    return out


def generate_parallel(out: Path, n_images: int, workers: int) -> None:
    """About `n_images` demo tiles, generated in shards (one seed each) and merged into one set."""
    n_patients = max(2, round(n_images / np.mean(LESIONS_PER_PATIENT)))
    shards = max(1, min(workers * 2, n_patients // 2))
    jobs = [(out / f"shard{i}", n_patients // shards + (i < n_patients % shards), 1000 + i) for i in range(shards)]
    with Pool(workers) as pool:
        dirs = pool.map(_shard, jobs)
    metas = []
    with h5py.File(out / "train-image.hdf5", "w") as dst:
        for d in dirs:
            meta = pd.read_csv(d / "train-metadata.csv", dtype={"patient_id": str})
            meta["patient_id"] = d.name + "_" + meta["patient_id"]  # patients are distinct per shard
            with h5py.File(d / "train-image.hdf5") as src:
                for key in src:
                    if key not in dst:
                        src.copy(src[key], dst, key)
            metas.append(meta)
    meta = pd.concat(metas).drop_duplicates("isic_id")
    meta.to_csv(out / "train-metadata.csv", index=False)


def bare_step_rate(backbone: str, size: int, batch: int, device: torch.device, steps: int = 30) -> float:
    """Images/s of forward + backward + AdamW step on random tensors already on the device
    (no data loading): the ceiling the loader should approach."""
    from lesion_ml.models.net import LesionNet

    model = to_device(LesionNet(backbone), device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device).float()
    for i in range(steps + 5):
        if i == 5:  # warm-up done (cudnn autotuning, allocator)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--backbone", default="efficientnet-b0")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if not cuda:
        print("no CUDA GPU visible: skipping the GPU part; running one tiny CPU fold of the same code instead")
        args.images, args.size, args.batch, args.workers = 120, 32, 16, 0
    with tempfile.TemporaryDirectory(prefix="lesion-gpu-check-") as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        generate_parallel(data, args.images, max(1, args.workers))
        gen_s = time.perf_counter() - t0
        ing = ingest(DataConfig(source="synthetic", verify_images="none"), data)
        folds = assign_folds(ing.table, SplitConfig(n_folds=5, seed=0))
        train = (folds["fold"] != 0).to_numpy()
        cfg = CnnModelConfig(backbone=args.backbone, image_size=args.size, epochs=args.epochs,
                             batch_size=args.batch, lr=1e-3)
        device = select_device("auto")
        if cuda:
            torch.backends.cudnn.benchmark = True
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        data = FoldData(folds["image_id"][train].tolist(), folds["target"].to_numpy()[train].astype(np.float32),
                        folds["image_id"][~train].tolist())
        result = train_fold(ing.store, data, cfg, device, num_workers=args.workers, seed=0)
        if cuda:
            torch.cuda.synchronize()
        total_s = time.perf_counter() - t0
        from sklearn.metrics import roc_auc_score

        bare = bare_step_rate(args.backbone, args.size, args.batch, device, steps=30 if cuda else 2)
        last_epoch = result.history[-1]["seconds"]

        y_valid = folds["target"].to_numpy()[~train]
        figures = {
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "torch": torch.__version__, "backbone": args.backbone, "image_size": args.size,
            "batch_size": args.batch, "epochs": args.epochs, "loader_workers": args.workers,
            "images": int(len(ing.table)), "train_images": int(train.sum()), "valid_images": int((~train).sum()),
            "generate_s": round(gen_s, 1), "fold_s": round(total_s, 1),
            "train_epoch_s": [h.get("seconds") for h in result.history],
            "train_images_per_s": round(train.sum() * args.epochs / sum(h["seconds"] for h in result.history), 1),
            "fold_images_per_s": round((train.sum() * args.epochs + (~train).sum()) / total_s, 1),
            "last_epoch_images_per_s": round(train.sum() / last_epoch, 1),
            "bare_step_images_per_s": round(bare, 1),
            "loader_to_bare_ratio": round(train.sum() / last_epoch / bare, 3),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "valid_roc_auc": round(float(roc_auc_score(y_valid, result.valid_pred)), 4),
            "amp": "bf16 autocast" if cuda else "off (CPU)",
        }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
