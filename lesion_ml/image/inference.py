"""Running an image model: the device, the forward pass on a batch (channels-last, bf16 on
CUDA), test-time augmentation over the 8 dihedral views, and prediction over a loader, on CPU
streams of batches (`on_streams`)."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lesion_ml.image.net import FoldAverage, LesionNet

__all__ = ["MAX_STREAMS", "cpu_streams", "dihedral", "forward_logits", "forward_prob", "on_streams", "predict",
           "select_device", "to_device", "use_threads"]

T, R = TypeVar("T"), TypeVar("R")
MAX_STREAMS = 4  # batches in flight at once on a CPU; each holds its own activations


def select_device(name: str) -> torch.device:
    """"auto" picks CUDA when present, else CPU; "cuda" without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train_cnn.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to `device` in channels-last layout (NHWC), which oneDNN on CPU and the tensor
    cores under bf16 autocast on CUDA both run faster than NCHW; `forward_logits` feeds it NHWC."""
    return model.to(device).to(memory_format=torch.channels_last)


def forward_logits(model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    meta = batch.get("meta")
    meta = None if meta is None else meta.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(x, meta) if isinstance(model, (LesionNet, FoldAverage)) else model(x)
    return out.squeeze(1).float()


@torch.no_grad()
def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips and quarter turns of an image batch (lesions have no orientation)."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(2, 3))
        out += [r, torch.flip(r, dims=(3,))]
    return out


def forward_prob(model: nn.Module, batch: dict, device: torch.device, tta: bool = False) -> torch.Tensor:
    """Malignancy probabilities of a batch; with `tta` the mean over its 8 dihedral views."""
    if not tta:
        return torch.sigmoid(forward_logits(model, batch, device))
    return torch.stack([torch.sigmoid(forward_logits(model, {**batch, "image": v}, device))
                        for v in dihedral(batch["image"])]).mean(0)


def cpu_streams(device: torch.device) -> tuple[int, int]:
    """(streams, torch threads each) for inference on `device`: on a CPU, the process's torch
    threads split into up to `MAX_STREAMS` streams; on a GPU one stream (the device runs the
    batches; its kernels are already asynchronous)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2:
        return 1, threads
    streams = min(threads, MAX_STREAMS)
    return streams, threads // streams


def on_streams(fn: Callable[[T], R], batches: Iterable[T], device: torch.device) -> Iterator[R]:
    """`fn(batch)` for each batch, in order, without gradients, on the streams of `cpu_streams`:
    several batches at once on a CPU, each on its own thread with fewer torch threads.

    One forward pass on all of a CPU's cores waits at every layer for its slowest thread, and a
    loader worker decoding the next batch takes a core from it: the pass then stalls on both.
    Streams of one thread each lose only the time the decoder takes from one of them (on 2 cores a
    32 px resnet18 predicted at 0.79-0.82 x its bare forward rate with one loader worker, and
    0.96-0.99 x on two streams). The batches are the same and each image's output is the same
    whatever the thread count. torch's thread count is restored afterwards."""
    streams, threads = cpu_streams(device)

    def run(batch: T) -> R:
        with torch.no_grad():  # grad mode is per thread
            return fn(batch)

    if streams == 1:
        yield from map(run, batches)
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with ThreadPoolExecutor(streams, thread_name_prefix="lesion-infer") as pool:
            pending: deque = deque()
            for batch in batches:
                pending.append(pool.submit(run, batch))
                if len(pending) > streams:  # the next batch is fetched while `streams` run
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        torch.set_num_threads(before)


def predict(model: nn.Module, loader: DataLoader, device: torch.device, tta: bool = False) -> np.ndarray:
    """Malignancy probabilities for every sample of `loader`, in order (see `forward_prob`), on
    the CPU streams of `on_streams`."""
    model.eval()
    out = list(on_streams(lambda batch: forward_prob(model, batch, device, tta).cpu().numpy(), loader, device))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def use_threads(n: int) -> None:
    """torch's CPU threads in this process (params.yaml train_cnn.threads): n > 0 sets them, 0
    keeps torch's default. Called where the work runs, so a Dask worker gets it too."""
    if n:
        torch.set_num_threads(n)
