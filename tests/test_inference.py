"""Inference on CPU streams (lesion_ml/image/inference.py): batches in order, on several threads,
the same outputs as one stream, no gradients, torch's thread count restored."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lesion_ml.image.inference import MAX_STREAMS, cpu_streams, on_streams, predict
from lesion_ml.image.loaders import collate_samples
from lesion_ml.image.net import LesionNet

CPU = torch.device("cpu")


@pytest.fixture
def threads():
    """Set torch's CPU threads for one test; the test session's own count comes back after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_cpu_threads_split_into_streams_and_a_gpu_takes_one(threads):
    threads(2)
    assert cpu_streams(CPU) == (2, 1)
    threads(1)
    assert cpu_streams(CPU) == (1, 1)
    threads(16)
    assert cpu_streams(CPU) == (MAX_STREAMS, 16 // MAX_STREAMS)
    assert cpu_streams(torch.device("cuda"))[0] == 1  # a device object; no GPU is needed to ask


def test_streams_run_batches_on_several_threads_in_order_without_gradients(threads):
    threads(2)
    seen, barrier = [], threading.Barrier(2, timeout=10)
    w = torch.ones(3, requires_grad=True)

    def fn(batch: int) -> tuple[int, bool, int]:
        if batch < 2:
            barrier.wait()  # the first two batches must be running at the same time
        seen.append(threading.current_thread().name)
        return batch, (w * 2).requires_grad, torch.get_num_threads()

    out = list(on_streams(fn, range(7), CPU))
    assert [b for b, _, _ in out] == list(range(7))
    assert not any(g for _, g, _ in out)
    assert {t for _, _, t in out} == {1}  # each stream runs on one torch thread ...
    assert len(set(seen)) == 2 and all(name.startswith("lesion-infer") for name in seen)
    assert torch.get_num_threads() == 2  # ... and the process's count is back afterwards


def test_an_error_in_a_stream_reaches_the_caller_and_restores_the_threads(threads):
    threads(2)

    def fn(batch: int) -> int:
        if batch == 3:
            raise ValueError("bad batch 3")
        return batch

    with pytest.raises(ValueError, match="bad batch 3"):
        list(on_streams(fn, range(6), CPU))
    assert torch.get_num_threads() == 2


def test_one_thread_runs_the_batches_in_the_calling_thread(threads):
    threads(1)
    names = list(on_streams(lambda b: threading.current_thread().name, range(3), CPU))
    assert names == [threading.current_thread().name] * 3


@pytest.mark.parametrize("n_meta", [0, 5])
def test_predict_on_streams_gives_the_one_stream_probabilities_bit_for_bit(threads, n_meta):
    torch.manual_seed(0)
    net = LesionNet("resnet18", "false", n_meta, 16, 0.2).to(memory_format=torch.channels_last).eval()
    gen = torch.Generator().manual_seed(1)
    samples = [{"image": torch.randint(0, 256, (3, 32, 32), generator=gen, dtype=torch.uint8),
                "label": torch.tensor(float(i % 2)),
                **({"meta": torch.randn(n_meta, generator=gen)} if n_meta else {})} for i in range(45)]
    loader = DataLoader(samples, batch_size=8, collate_fn=collate_samples)
    threads(1)
    one = predict(net, loader, CPU)
    threads(2)
    two = predict(net, loader, CPU)
    assert one.shape == (45,) and np.array_equal(one, two)
    assert np.ptp(one) > 0  # the images give different outputs: a shuffled order would show
