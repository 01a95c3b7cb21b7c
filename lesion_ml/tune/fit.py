"""The models a tuning trial fits: the metadata track (prepare's preprocessing + LightGBM) or an
image model of train_cnn.models, each fitted on some rows of a study's data and predicting others."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lesion_ml.config import PrepareConfig
from lesion_ml.config.tune import TuneBase
from lesion_ml.tune.data import TuneData


class GbdtFitter:
    """Fits the metadata track (prepare's preprocessing + LightGBM) on some rows and predicts others.

    It keeps the prepared features of recent (preprocessing params, rows) pairs, so trials that do
    not tune a prepare key reuse them. They are kept before the k-best cut, with the selector's
    scores: trials that tune only `prepare.select.k` take the top k of the same scores, exactly
    what the prepare stage's selector would keep."""

    def __init__(self, data: TuneData, cache_size: int = 24):
        self.data = data
        self._cache: OrderedDict[str, tuple[pd.DataFrame, np.ndarray]] = OrderedDict()
        self._size = cache_size

    def _features(self, prepare: PrepareConfig, scope: np.ndarray, train: np.ndarray) -> pd.DataFrame:
        from lesion_ml.tabular.prepare import fit_transform_fold

        every = prepare.model_copy(update={"select": prepare.select.model_copy(update={"k": 10**9})})
        key = hashlib.sha256(every.model_dump_json().encode() + np.packbits(scope).tobytes()
                             + np.packbits(train).tobytes()).hexdigest()
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            rows = np.flatnonzero(scope)
            X, _, pipe = fit_transform_fold(self.data.features.iloc[rows], pd.Series(self.data.y[rows]),  # noqa: N806
                                            train[rows], every)
            scores = pipe.named_steps["select"].scores_[pipe.named_steps["select"].support_]
            self._cache[key] = (X, np.lexsort((np.arange(X.shape[1]), -scores)))  # best first; ties: earlier
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        X, order = self._cache[key]  # noqa: N806
        return X.iloc[:, np.sort(order[:prepare.select.k])]

    def fit_predict(self, params: TuneBase, train: np.ndarray, test: np.ndarray, seed: int = 0) -> np.ndarray:
        """Fit on the rows of mask `train` (preprocessing too), predict the rows of mask `test`.
        `seed` is unused: the LightGBM seeds are train_gbdt.seeds."""
        from lesion_ml.tabular.gbdt import fit_gbdt, predict_gbdt

        scope = train | test
        X = self._features(params.prepare, scope, train)  # noqa: N806 - rows of `scope`, in order
        local_train, local_test = train[scope], test[scope]
        model = fit_gbdt(X[local_train], self.data.y[train], params.train_gbdt)
        return predict_gbdt(model, X[local_test])


class CnnFitter:
    """Trains an image model of train_cnn.models (lesion_ml.image.train.train_fold) on some rows and
    predicts others; a fusion model's metadata features are prepared on the same training rows."""

    def __init__(self, data: TuneData, store: Any, model: str, device: str = "auto", num_workers: int = 0):
        from lesion_ml.image.inference import select_device

        self.data, self.store, self.model = data, store, model
        self.device, self.num_workers = select_device(device), num_workers
        self._meta = GbdtFitter(data, cache_size=4)

    def fit_predict(self, params: TuneBase, train: np.ndarray, test: np.ndarray, seed: int = 0,
                    on_epoch: Callable[[int, dict], None] | None = None) -> np.ndarray:
        """Train on the rows of mask `train` with seed `cfg.seed + seed`, predict the rows of mask
        `test`; `on_epoch(epoch, row)` after every epoch (row: the epoch's metrics)."""
        from lesion_ml.image.data import fold_data
        from lesion_ml.image.train import train_fold

        cfg = params.models[self.model]
        d, scope = self.data, train | test
        rows = np.flatnonzero(scope)  # the fold's table: the rows of `scope`, in order
        table = pd.DataFrame({"image_id": d.ids[rows], "target": d.y[rows], "patient_id": d.groups[rows]})
        meta = self._meta._features(params.prepare, scope, train).to_numpy(np.float32) if cfg.fusion.enabled else None
        fold = fold_data(table, train[scope], cfg, valid=test[scope], meta=meta)
        result = train_fold(self.store, fold, cfg, self.device, self.num_workers, seed=cfg.seed + seed,
                            label=f"tune {self.model}", on_epoch=on_epoch)
        return result.valid_pred


def make_fitter(data: TuneData, base: TuneBase, model: str, store: Any = None) -> GbdtFitter | CnnFitter:
    """The fitter of a study's model: the metadata track for gbdt, else the image model
    `base.models[model]` on the images of `store` (an ImageStore of the ingest stage's manifest).

    Raises:
        ValueError: an image model with balance.minority_set (not supported in trials), or no store.
    """
    if model == "gbdt":
        return GbdtFitter(data)
    if base.models[model].balance.minority_set:
        raise ValueError(f"tuning image model {model!r}: balance.minority_set is not supported in tuning trials; "
                         f"set params.yaml train_cnn.models.{model}.balance.minority_set: false or tune another model")
    if store is None:
        raise ValueError(f"tuning image model {model!r} needs the image store (the ingest stage's manifest)")
    return CnnFitter(data, store, model, base.device, base.num_workers)
