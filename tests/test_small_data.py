"""Small real-world data sets must train, or stop with a clear error where they cannot.

The sweep runs the pipeline's per-fold path (patient-grouped folds from `assign_folds`, then
`train_fold` on each fold) on 20, 50 and 120 images, 2 and 5 folds, every sampler, early stopping
on and off, fusion on and off. `MUST_STOP` lists the configurations that cannot train: 20 images
(about 6 patients) leave no fold the 5 training patients that early stopping's patient-grouped
holdout needs. Each of those must stop with lesion-ml's own error naming the params key to
change; every other configuration must train every fold and predict its validation rows.
"""
from __future__ import annotations

import itertools
import math
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import lesion_ml
from lesion_ml.config import CnnModelConfig, ConfigError, SplitConfig, validate_params
from lesion_ml.data.split import assign_folds
from lesion_ml.image import backbones
from lesion_ml.image.schedule import LrShape, make_schedule
from lesion_ml.image.train import FoldData, train_fold

LIBRARY = Path(lesion_ml.__file__).parent


class ArrayStore:
    """Images held in memory (the image store interface: `get(id, min_side)`)."""

    def __init__(self, images: dict[str, np.ndarray]):
        self.images = images

    def get(self, image_id: str, min_side: int | None = None) -> np.ndarray:
        return self.images[image_id]


def _data(n: int, seed: int = 0) -> tuple[ArrayStore, pd.DataFrame, np.ndarray]:
    """`n` lesions of about n/3 patients, a third malignant (brighter), and 3 metadata columns."""
    rng = np.random.default_rng(seed)
    patients = np.array([f"P{i % max(2, n // 3)}" for i in range(n)])
    target = (rng.random(n) < 0.35).astype(int)
    target[:2] = [1, 0]
    images = {f"I{i}": np.clip(rng.normal(90 + 60 * t, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
              for i, t in enumerate(target)}
    table = pd.DataFrame({"image_id": list(images), "patient_id": patients, "target": target})
    meta = np.c_[target + rng.normal(0, 1, n), rng.normal(0, 1, (n, 2))].astype(np.float32)
    return ArrayStore(images), table, meta


class TinyNet(nn.Module):
    """A stand-in backbone with the same kinds of layers (convolutions, BatchNorm, global pooling,
    an `fc` head) and a few thousand weights, so the sweep's 72 runs stay quick. The BatchNorm1d
    after the pooling fails on a batch of one image, as any BatchNorm backbone may."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(16))
        self.fc = nn.Linear(16, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@pytest.fixture
def tiny_backbone(monkeypatch) -> str:
    monkeypatch.setitem(backbones.REGISTRY, "tiny-test", backbones.BackboneSpec(TinyNet, lambda: "", "fc"))
    return "tiny-test"


SWEEP = list(itertools.product([20, 50, 120], [2, 5], ["none", "weighted", "downsample"], [False, True],
                               [False, True]))


def must_stop(n: int, n_folds: int, sampler: str, early_stop: bool, fusion: bool) -> bool:
    """The configurations that cannot train: early stopping on 20 images (too few patients)."""
    return early_stop and n == 20


MUST_STOP = [c for c in SWEEP if must_stop(*c)]


def _clear_error(err: BaseException) -> str | None:
    """Why `err` is not a clear error (None when it is one)."""
    if not isinstance(err, ValueError):
        return f"{type(err).__name__} is not one of lesion-ml's errors"
    origin = Path(traceback.extract_tb(err.__traceback__)[-1].filename).resolve()
    if LIBRARY not in origin.parents:
        return f"raised inside {origin}, not by lesion-ml"
    if not any(key in str(err) for key in ("train_cnn.models", "split.n_folds")):
        return "the message names no params key to change"
    return None


def test_the_sweep_expects_most_configurations_to_train():
    assert len(SWEEP) == 72 and len(MUST_STOP) == 12  # the 12 of 20 images with early stopping


@pytest.mark.slow
@pytest.mark.parametrize("n,n_folds,sampler,early_stop,fusion", SWEEP,
                         ids=[f"{n}img-{k}folds-{s}-es{int(e)}-fusion{int(f)}" for n, k, s, e, f in SWEEP])
def test_small_data_trains_or_stops_with_a_clear_error(n, n_folds, sampler, early_stop, fusion, tiny_backbone):
    """A configuration of MUST_STOP stops with a clear error; any other trains every fold."""
    torch.manual_seed(0)
    stops = must_stop(n, n_folds, sampler, early_stop, fusion)
    store, table, meta = _data(n)
    cfg = CnnModelConfig(image_size=32, epochs=4, batch_size=8, lr=0.003,
                         balance={"sampler": sampler, "neg_per_pos": 2},
                         early_stopping={"metric": "auc" if early_stop else "none", "patience": 2, "holdout": 0.2},
                         fusion={"enabled": fusion}, monitor_valid=True).model_copy(update={"backbone": tiny_backbone})
    try:
        folds = assign_folds(table, SplitConfig(n_folds=n_folds, seed=0))
        for k in range(n_folds):
            train = (folds["fold"] != k).to_numpy()
            data = FoldData(folds["image_id"][train].tolist(), folds["target"].to_numpy()[train].astype(np.float32),
                            folds["image_id"][~train].tolist(), valid_y=folds["target"].to_numpy()[~train],
                            train_groups=folds["patient_id"].to_numpy()[train],
                            train_meta=meta[train] if fusion else None, valid_meta=meta[~train] if fusion else None)
            result = train_fold(store, data, cfg, torch.device("cpu"), seed=k)
            assert result.valid_pred.shape == ((~train).sum(),)
            assert np.isfinite(result.valid_pred).all() and ((result.valid_pred >= 0) & (result.valid_pred <= 1)).all()
            assert result.history and all(math.isfinite(r["train_loss"]) and r["images"] >= 2 for r in result.history)
    except Exception as err:  # noqa: BLE001 - the point: what kind of error reached the user
        assert stops, "this configuration must train:\n" + "".join(traceback.format_exception(err))
        why = _clear_error(err)
        assert why is None, f"{why}:\n" + "".join(traceback.format_exception(err))
        assert "early stopping needs" in str(err) and "early_stopping.metric: none" in str(err), str(err)
        return
    assert not stops, "expected a clear error: early stopping cannot hold out patients from 20 images"


@pytest.mark.parametrize("kind", ["onecycle", "cosine"])
@pytest.mark.parametrize("epochs,warmup_epochs", [(1, 0), (2, 1), (8, 0), (8, 3), (30, 5)])
@pytest.mark.parametrize("steps_per_epoch", [1, 2, 3, 17])
def test_schedule_is_valid_for_any_number_of_steps(kind, epochs, warmup_epochs, steps_per_epoch):
    cfg = CnnModelConfig(epochs=epochs, warmup_epochs=warmup_epochs, schedule=kind, lr=0.01, backbone_lr_mult=0.1)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW([{"params": [model.weight], "lr": 0.001}, {"params": [model.bias], "lr": 0.01}])
    total = epochs * steps_per_epoch
    scheduler = make_schedule(cfg, optimizer, total)
    lrs = []
    for _ in range(total):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    lrs = np.array(lrs)
    assert lrs.shape == (total, 2) and np.isfinite(lrs).all() and (lrs > 0).all()
    assert np.allclose(lrs[:, 0] * 10, lrs[:, 1])  # each group keeps its own peak (backbone_lr_mult)
    assert lrs[:, 1].max() == pytest.approx(0.01)  # the configured lr is reached
    if total >= 3:
        assert lrs[-1, 1] < 0.5 * 0.01  # and decays by the end
    if kind == "onecycle" and total >= 10:
        assert lrs[0, 1] == pytest.approx(0.01 / 25)  # warms up from 1/25 of it


def test_schedule_resumes_from_its_state_dict():
    cfg = CnnModelConfig(epochs=4)
    model = torch.nn.Linear(2, 1)
    a = torch.optim.AdamW(model.parameters(), lr=0.1)
    sa = make_schedule(cfg, a, 12)
    for _ in range(5):
        a.step()
        sa.step()
    b = torch.optim.AdamW(model.parameters(), lr=0.1)
    sb = make_schedule(cfg, b, 12)
    sb.load_state_dict(sa.state_dict())
    b.load_state_dict(a.state_dict())
    for _ in range(6):
        a.step(), b.step()
        sa.step(), sb.step()
        assert a.param_groups[0]["lr"] == b.param_groups[0]["lr"]


def test_schedule_refuses_zero_steps_and_unknown_kinds():
    with pytest.raises(ValueError, match="at least 1 step, got 0"):
        LrShape("onecycle", 0)
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        LrShape("linear", 5)


def test_too_few_training_images_for_a_batch_is_a_clear_error():
    store, table, _ = _data(20)
    ids, y = table["image_id"].tolist(), table["target"].to_numpy(np.float32)
    cfg = CnnModelConfig(image_size=32, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match=r"1 training image.*at least 2.*split\.n_folds"):
        train_fold(store, FoldData(ids[:1], y[:1], ids[1:]), cfg, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"train_cnn\.models\.m\.batch_size: .*greater than or equal to 2"):
        validate_params({"train_cnn": {"models": {"m": {"batch_size": 1}}}})
    no_pos = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match=r"no malignant training image.*train_cnn\.models\.<name>\.balance\.sampler"):
        train_fold(store, FoldData(ids[:10], no_pos, ids[10:]), cfg.model_copy(
            update={"balance": cfg.balance.model_copy(update={"sampler": "downsample"})}), torch.device("cpu"))
