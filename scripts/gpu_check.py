"""GPU check: is the GPU ever waiting on the data? One fold of each backbone on a generated ISIC
2024-format set (50,000 tiles by default), bf16 autocast, through the training loop's own loaders.

For each backbone: the training rate of the fold's last epoch against the bare train step (random
uint8 batches already on the GPU, same network and optimiser), the inference rate of the
validation rows through the loader against the bare forward pass, the validation ROC-AUC and the
peak GPU memory; plus the input path's profile (`lesion bench loader`). Writes JSON and a markdown
report naming the device. Without a CUDA GPU it says so and runs a tiny CPU version of the same
code (so the script stays tested).

    python scripts/gpu_check.py [--images 50000] [--backbones efficientnet-b0 resnet18] [--size 128]
        [--workers N] [--json reports/gpu_check.json] [--markdown F]
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

from lesion_ml.app.bench import bench_loader, format_loader_table  # noqa: E402
from lesion_ml.config import CnnModelConfig, DataConfig, SplitConfig, SyntheticConfig  # noqa: E402
from lesion_ml.data.sources import ingest  # noqa: E402
from lesion_ml.data.split import assign_folds  # noqa: E402
from lesion_ml.data.synthetic import generate_synthetic  # noqa: E402
from lesion_ml.image.train import (  # noqa: E402
    FoldData,
    LesionImages,
    create_transforms,
    make_loader,
    predict,
    select_device,
    to_device,
    train_fold,
)

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


def _bare_rates(backbone: str, size: int, batch: int, device: torch.device, steps: int) -> tuple[float, float]:
    """(train step, forward) images/s on random uint8 batches already on the device, with the same
    network, optimiser, channels-last layout and autocast as training: the ceilings the loaders
    should reach."""
    from lesion_ml.image.net import LesionNet
    from lesion_ml.image.schedule import make_optimizer

    model = to_device(LesionNet(backbone), device).train()
    opt = make_optimizer([{"params": list(model.parameters()), "lr": 1e-4}], 0.0001)
    x = torch.randint(0, 256, (batch, 3, size, size), device=device, dtype=torch.uint8)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device).float()

    def timed(step) -> float:
        for i in range(steps + 5):
            if i == 5:  # warm-up done (cudnn autotuning, allocator)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return steps * batch / (time.perf_counter() - start)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def forward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            torch.sigmoid(model(x).float())

    train = timed(train_step)
    model.eval()
    return train, timed(forward)


def check_backbone(backbone: str, ing, folds: pd.DataFrame, args, device: torch.device) -> dict:
    """One fold of `backbone`: training and inference rates through the loaders vs bare."""
    cuda = device.type == "cuda"
    train = (folds["fold"] != 0).to_numpy()
    cfg = CnnModelConfig(backbone=backbone, image_size=args.size, epochs=args.epochs, batch_size=args.batch, lr=1e-3)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    data = FoldData(folds["image_id"][train].tolist(), folds["target"].to_numpy()[train].astype(np.float32),
                    folds["image_id"][~train].tolist())
    t0 = time.perf_counter()
    result = train_fold(ing.store, data, cfg, device, num_workers=args.workers, seed=0)
    fold_s = time.perf_counter() - t0
    eval_dl = make_loader(LesionImages(ing.store, data.valid_ids, None, create_transforms(args.size, False),
                                       min_side=args.size), args.batch * 2, args.workers, device)
    predict(result.model, eval_dl, device)  # workers started, cudnn tuned
    t0 = time.perf_counter()
    n_pred = len(predict(result.model, eval_dl, device))
    inference = n_pred / (time.perf_counter() - t0)
    bare_train, bare_forward = _bare_rates(backbone, args.size, args.batch, device, 30 if cuda else 2)
    last = result.history[-1]["seconds"]
    from sklearn.metrics import roc_auc_score

    return {
        "train_images": int(train.sum()), "valid_images": int((~train).sum()), "fold_s": round(fold_s, 1),
        "train_epoch_s": [h["seconds"] for h in result.history],
        "last_epoch_images_per_s": round(train.sum() / last, 1), "bare_train_step_images_per_s": round(bare_train, 1),
        "train_ratio": round(train.sum() / last / bare_train, 3),
        "inference_images_per_s": round(inference, 1), "bare_forward_images_per_s": round(bare_forward, 1),
        "inference_ratio": round(inference / bare_forward, 3),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "valid_roc_auc": round(float(roc_auc_score(folds["target"].to_numpy()[~train], result.valid_pred)), 4),
    }


def markdown(f: dict) -> str:
    """A standalone markdown report: the figures, with the device and the command named."""
    lines = ["# GPU check results", "",
             f"`{f['command']}` on {f['date']}: **{f['device']}** (torch {f['torch']}, {f['cpu_cores']} CPU cores, "
             f"{f['loader_workers']} loader workers), {f['images']:,} generated tiles ({f['generate_s']} s to "
             f"generate), {f['image_size']} px, batch {f['batch_size']}, {f['epochs']} epochs of fold 0 (5 folds), "
             f"{f['amp']}.", "",
             "| backbone | train: loader / bare step | images/s (loader, bare) | inference: loader / bare forward "
             "| images/s (loader, bare) | peak GPU memory | valid ROC-AUC |",
             "|---|---|---|---|---|---|---|"]
    for name, m in f["models"].items():
        mem = f"{m['peak_gpu_memory_gib']} GiB" if m["peak_gpu_memory_gib"] is not None else "n/a"
        lines.append(f"| {name} | {m['train_ratio']:.3f} | {m['last_epoch_images_per_s']:,.0f} / "
                     f"{m['bare_train_step_images_per_s']:,.0f} | {m['inference_ratio']:.3f} | "
                     f"{m['inference_images_per_s']:,.0f} / {m['bare_forward_images_per_s']:,.0f} | {mem} | "
                     f"{m['valid_roc_auc']:.3f} |")
    lines += ["", "Epoch times (s): " + "; ".join(f"{n}: {m['train_epoch_s']}" for n, m in f["models"].items()),
              "", "Input path profile (`lesion bench loader` on the same tiles):", "", "```", f["loader_table"], "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--backbones", nargs="+", default=["efficientnet-b0", "resnet18"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--markdown", help="write a standalone markdown report here")
    args = parser.parse_args()
    command = "scripts/gpu_check.sh " + " ".join(sys.argv[1:])

    cuda = torch.cuda.is_available()
    if not cuda:
        print("no CUDA GPU visible: skipping the GPU part; running a tiny CPU version of the same code instead")
        args.images, args.size, args.batch, args.workers, args.epochs = 120, 32, 16, 0, 1
    device = select_device("auto")
    if cuda:
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(prefix="lesion-gpu-check-") as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        generate_parallel(data, args.images, max(1, args.workers))
        gen_s = time.perf_counter() - t0
        ing = ingest(DataConfig(source="synthetic", verify_images="none"), data)
        folds = assign_folds(ing.table, SplitConfig(n_folds=5, seed=0))
        loader = bench_loader(args.size, args.batch, min(len(ing.table), 4096 if cuda else 64),
                              tuple(sorted({0, max(1, args.workers // 2), args.workers})), "auto", data, epochs=2)
        models = {b: check_backbone(b, ing, folds, args, device) for b in args.backbones}
        ing.store.close()
    figures = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "command": command, "cpu_cores": os.cpu_count(),
        "image_size": args.size, "batch_size": args.batch, "epochs": args.epochs, "loader_workers": args.workers,
        "images": int(len(ing.table)), "generate_s": round(gen_s, 1),
        "amp": "bf16 autocast" if cuda else "off (CPU)", "models": models, "loader": loader,
        "loader_table": format_loader_table(loader),
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "loader_table"}, indent=2))
    print(figures["loader_table"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
