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
    run = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py"), "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "no CUDA GPU visible: skipping the GPU part" in run.stdout
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["backbone"] == "efficientnet-b0"
    assert figures["train_images"] + figures["valid_images"] == figures["images"] > 50
    assert figures["train_images_per_s"] > 0 and figures["peak_gpu_memory_gib"] is None
