"""The exported model: a folder that `lesion predict` and `lesion explain` load without unpickling.

Layout of a bundle folder (written by `write_bundle`, read by `FinalModel.load`):

    manifest.json        what the model is: components, how their scores combine (the combiner:
                         lesion_ml.evaluate.combine's estimator as JSON), calibration, threshold,
                         metrics with intervals, why it was chosen, what it needs as input
    preprocess.json      the metadata preprocessor (lesion_ml.tabular.export), when metadata is used
    gbdt_seed<s>.txt     LightGBM text models (the metadata model), one per seed
    stack_seed<s>.txt    LightGBM text models of the stack (metadata + image scores)
    cnn_<name>.safetensors  image-model weights (safetensors: tensors only); with
                         final.image_models: fold_average, cnn_<name>_fold<k>.safetensors, one per
                         fold model, whose mean logit is the image model's
    MODEL_CARD.md        data, metrics with intervals, subgroups, intended use, limitations

Nothing in it is a pickle: JSON, LightGBM's own text format and safetensors.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lesion_ml.config import CnnModelConfig
from lesion_ml.errors import DataError
from lesion_ml.evaluate.combine import Calibrator, StackEnsemble, combiner_from_json
from lesion_ml.image.net import FoldAverage, LesionNet
from lesion_ml.io import json_ready, load_weights, atomic_folder

log = logging.getLogger(__name__)

FORMAT = "lesion-ml-model/3"  # 2: safetensors weights, combiners and calibration as estimator JSON; 3: an
READABLE = ("lesion-ml-model/2", FORMAT)  # image model's weights may be a list (the mean of its fold models)


def inside(folder: Path, name: object, key: str) -> Path:
    """The file `name` of the model folder `folder` (named in its manifest under `key`).

    A model folder comes from elsewhere, so what it names is input: a file name that is not
    relative, that climbs out with "..", or that resolves (through symlinks) outside the folder
    is refused before anything opens it.

    Raises:
        DataError: naming the manifest key, the value found and the folder.
    """
    where = f"{Path(folder) / 'manifest.json'}: {key}"
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where} is {name!r}; expected the name of a file inside the model folder")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise DataError(f"{where} is {name!r}; a model folder may only name files inside itself (no absolute "
                        "paths, no '..'): this is not a model folder lesion-ml wrote, or it was edited")
    root, target = Path(folder).resolve(), (Path(folder) / rel).resolve()
    if not target.is_relative_to(root):
        raise DataError(f"{where}: {name!r} resolves to {target}, outside the model folder {root} (a symbolic "
                        "link); a model folder must hold its own files: copy it with `cp -rL` to follow the links")
    return Path(folder) / rel


def _load_net(path: Path, cfg: CnnModelConfig, n_meta: int, file: str, name: str) -> LesionNet:
    """One image network of the bundle `path` from its safetensors file (a DataError naming the
    file when it is not one)."""
    net = LesionNet(cfg.backbone, "false", n_meta, cfg.fusion.hidden, cfg.fusion.dropout)
    weights = inside(path, file, f"cnn.{name}.weights")
    try:
        state = load_weights(weights)
    except Exception as err:  # noqa: BLE001 - a corrupt or foreign file: say which
        raise DataError(f"{weights}: cannot load the weights (not a safetensors file of tensors: {err}); "
                        "re-export the model with this version of lesion-ml") from None
    net.load_state_dict(state)
    return net


@dataclass
class CnnComponent:
    name: str
    config: CnnModelConfig
    n_meta: int
    net: LesionNet | FoldAverage  # FoldAverage: the mean of the fold models (final.image_models: fold_average)


@dataclass
class FinalModel:
    """A loaded bundle. `score_*` methods give component scores; `combine` turns them into the
    model's probability; `decide` applies the saved threshold."""

    path: Path
    manifest: dict[str, Any]
    preprocess: dict[str, Any] | None = None
    gbdt: list[Any] = field(default_factory=list)
    combiner: Any = None  # how the components' scores combine (None for a single model)
    cnns: dict[str, CnnComponent] = field(default_factory=dict)

    @property
    def stack(self) -> list[Any]:
        """The stack's LightGBM boosters (empty unless the model is a stack)."""
        return self.combiner.boosters() if isinstance(self.combiner, StackEnsemble) else []

    @property
    def needs_metadata(self) -> bool:
        return bool(self.manifest["needs_metadata"])

    @property
    def fallback(self) -> dict[str, Any] | None:
        return self.manifest.get("fallback")

    @classmethod
    def load(cls, path: Path | str, device: torch.device | str = "cpu") -> FinalModel:
        """Read a bundle folder. Raises DataError (naming the file) when it is not one."""
        import lightgbm as lgb

        path = Path(path)
        man_file = path / "manifest.json"
        if man_file.is_file():
            inside(path, "manifest.json", "the manifest")
        if not man_file.is_file():
            raise DataError(f"{path}: not a lesion-ml model folder (no manifest.json); run `make run` (dvc repro) "
                            "to export models/final, or pass --model")
        try:
            manifest = json.loads(man_file.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{man_file}: not valid JSON ({err})") from None
        if manifest.get("format") not in READABLE:
            raise DataError(f"{man_file}: format {manifest.get('format')!r}, expected {FORMAT!r}; re-export the "
                            "model with this version of lesion-ml")
        model = cls(path, manifest)
        if manifest.get("preprocess"):
            model.preprocess = json.loads(inside(path, manifest["preprocess"], "preprocess").read_text())

        def booster(file: str, key: str):
            return lgb.Booster(model_str=inside(path, file, key).read_text())

        model.gbdt = [booster(f, "gbdt.files") for f in manifest.get("gbdt", {}).get("files", [])]
        spec = manifest.get("combiner")
        if spec is not None:
            if spec.get("kind") == "stack":
                spec = {**spec, "models": [inside(path, f, "combiner.files").read_text() for f in spec["files"]]}
            try:
                model.combiner = combiner_from_json(spec)
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(f"{man_file}: combiner is not one lesion-ml writes ({err!r})") from None
        for name, spec in manifest.get("cnn", {}).items():
            cfg = CnnModelConfig.model_validate(spec["config"])
            files = spec["weights"] if isinstance(spec["weights"], list) else [spec["weights"]]
            nets = [_load_net(path, cfg, spec["n_meta"], f, name) for f in files]
            net = FoldAverage(nets) if isinstance(spec["weights"], list) else nets[0]
            # channels-last, as in training: `forward_logits` feeds NHWC batches
            net = net.to(torch.device(device)).to(memory_format=torch.channels_last).eval()
            model.cnns[name] = CnnComponent(name, cfg, spec["n_meta"], net)
        return model

    # -- scores of the parts --------------------------------------------------------------
    def score_gbdt(self, features: pd.DataFrame) -> np.ndarray:
        cols = self.manifest["gbdt"]["columns"]
        return np.mean([b.predict(features[cols].to_numpy(np.float64)) for b in self.gbdt], axis=0)

    def combine(self, parts: dict[str, np.ndarray], features: pd.DataFrame | None = None) -> np.ndarray:
        """The model's score from its components' scores (before calibration): the combiner
        evaluate scored the out-of-fold rows with."""
        if self.combiner is None:
            return parts[self.manifest["components"][0]]
        return self.combiner.predict(parts, features)

    def finish(self, score: np.ndarray, fallback: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated probability, decision 0/1) with the saved calibration and threshold."""
        spec = self.fallback if fallback else self.manifest
        p = Calibrator.from_json(spec.get("calibration")).predict(score)
        return p, (p >= spec["threshold"]).astype(int)


def write_bundle(out: Path, manifest: dict[str, Any], files: dict[str, bytes | str], card: str) -> Path:
    """Write a bundle folder atomically: into a sibling temporary folder, then renamed over `out`
    (lesion_ml.io.atomic_folder).

    An interrupted export leaves the previous bundle (or nothing), never a partial one.
    """
    out = Path(out)
    with atomic_folder(out) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data.encode() if isinstance(data, str) else data)
        (tmp / "MODEL_CARD.md").write_text(card)
        text = json.dumps(json_ready({"format": FORMAT, **manifest}), indent=1, allow_nan=False)
        (tmp / "manifest.json").write_text(text + "\n")
    return out
