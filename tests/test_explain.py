"""Explanations: where Grad-CAM points, and TreeSHAP contributions that add up to the model's score."""
from __future__ import annotations

from types import SimpleNamespace

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lesion_ml.model.explain import explain_metadata, grad_cam


class BrightnessNet(nn.Module):
    """A network whose logit rises with the brightness of every region: its evidence is where the
    image is bright. Backbone: a 1x1 convolution (brightness), pooling by 8, global average pool."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            conv.weight.fill_(1 / 3 / 255)
            conv.bias.zero_()
        self.backbone = nn.Sequential(conv, nn.AvgPool2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2, 1)
        with torch.no_grad():
            self.head.weight.fill_(1.0)
            self.head.bias.fill_(-0.5)

    def forward(self, x, meta=None):
        return self.head(self.backbone(x.float()))


@pytest.mark.parametrize("corner", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_grad_cam_peaks_where_the_evidence_is(corner):
    h, w = 64, 96  # not square: a swapped height and width would show
    image = np.full((h, w, 3), 20, np.uint8)
    rows = slice(0, h // 4) if corner[0] == 0 else slice(3 * h // 4, h)
    cols = slice(0, w // 4) if corner[1] == 0 else slice(3 * w // 4, w)
    image[rows, cols] = 250
    cam, prob, positive = grad_cam(BrightnessNet(), torch.from_numpy(image).permute(2, 0, 1).contiguous())
    assert cam.shape == (h, w) and positive and 0 < prob < 1
    assert cam.max() == pytest.approx(1.0)
    peak_row, peak_col = np.unravel_index(int(cam.argmax()), cam.shape)
    assert (peak_row >= h // 2) == bool(corner[0]) and (peak_col >= w // 2) == bool(corner[1])
    assert cam[rows, cols].mean() > 3 * cam[h // 4:3 * h // 4, w // 4:3 * w // 4].mean()  # the corner, not the middle


def test_tree_shap_contributions_add_up_to_the_models_log_odds(tmp_path):
    rng = np.random.default_rng(0)
    cols = ["age_approx", "clin_size_long_diam_mm", "tbp_lv_H", "tbp_lv_deltaE"]
    X = rng.normal(size=(300, len(cols)))  # noqa: N806
    y = (X[:, 1] + 0.5 * X[:, 3] + rng.normal(scale=0.5, size=300) > 0.8).astype(int)
    boosters = [lgb.train({"objective": "binary", "num_leaves": 7, "verbose": -1, "seed": s},
                          lgb.Dataset(X, y), num_boost_round=20) for s in (1, 2)]
    model = SimpleNamespace(gbdt=boosters, stack=None, manifest={"gbdt": {"columns": cols}})
    features = pd.DataFrame(X[:25], columns=cols, index=[f"IMG_{i}" for i in range(25)])
    explained = explain_metadata(model, features, top=len(cols))
    table = explained.contributions
    margin = np.mean([b.predict(X[:25], raw_score=True) for b in boosters], axis=0)
    bias = np.mean([b.predict(X[:25], pred_contrib=True)[:, -1] for b in boosters], axis=0)
    sums = table.groupby("image_id", sort=False)["contribution_logodds"].sum().reindex(features.index)
    np.testing.assert_allclose(sums.to_numpy() + bias, margin, atol=1e-3)  # contributions rounded to 1e-5
    # the feature that drives the label is each image's largest contribution more often than any other
    top = table[table["rank"] == 1]["feature"].value_counts()
    assert top.index[0] == "clin_size_long_diam_mm"
    assert list(explained.importance["feature"])[0] == "clin_size_long_diam_mm"  # the most gain, listed first
    assert explained.importance["share"].sum() == pytest.approx(1.0, abs=1e-3)
