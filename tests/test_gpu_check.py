from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path; the GPU path is run by hand")
def test_gpu_check_without_gpu_says_so_and_runs_a_tiny_cpu_fold(tmp_path):
    out = tmp_path / "figures.json"
    md = tmp_path / "gpu_check.md"
    run = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py"), "--json", str(out), "--markdown", str(md)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "no CUDA GPU visible: skipping the GPU part" in run.stdout
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and set(figures["models"]) == {"efficientnet-b0", "resnet18"}
    for m in figures["models"].values():
        assert m["train_images"] + m["valid_images"] == figures["images"] > 50
        assert m["train_ratio"] > 0 and m["inference_ratio"] > 0 and m["peak_gpu_memory_gib"] is None
    assert set(figures["loader"]["per_image_us"]) == {"read", "decode", "transform", "collate", "to_device"}
    assert set(figures["loader"]["loaders"]) == {"0", "1"}
    report = md.read_text()
    assert "**cpu**" in report and "| resnet18 |" in report and "loader bench:" in report
