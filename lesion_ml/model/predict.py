"""Predict new cases with an exported model (models/final): images from an HDF5 file, a folder or
a list of files, metadata from a CSV, one output row per image.

    lesion predict --model models/final --images PATH [PATH ...] [--metadata CSV] [--tta] --out predictions.csv
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lesion_ml.catalogue import GBDT
from lesion_ml.data.images import IMAGE_SUFFIXES, ImageStore
from lesion_ml.data.sources import RENAMES, index_folder, read_csv
from lesion_ml.errors import BadImageError, DataError
from lesion_ml.image.augment import model_transforms
from lesion_ml.image.inference import forward_prob, on_streams
from lesion_ml.image.loaders import LesionImages, as_hwc, make_loader
from lesion_ml.model.bundle import FinalModel
from lesion_ml.tabular.export import apply_preprocessor
from lesion_ml.tabular.prepare import clean_metadata

log = logging.getLogger(__name__)

ID_COLUMNS = ("isic_id", "image_id", "image_name", "image")  # first present names the image
PASS_LOG = "image pass"  # starts the log line that times each pass over the images (lesion bench scale reads it)


def open_images(paths: Sequence[Path | str]) -> tuple[ImageStore, list[str]]:
    """An image store and its ids (file stems or HDF5 keys, sorted) from one HDF5 file, one folder
    (searched recursively) or a list of image files.

    Raises:
        DataError: a path does not exist, is of an unsupported kind, or two files share an id.
    """
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise DataError(f"{p}: no such file or folder (--images)")
    if len(paths) == 1 and paths[0].is_file() and paths[0].suffix.lower() in (".h5", ".hdf5"):
        store = ImageStore(hdf5=paths[0])
        return store, sorted(store.ids())
    if len(paths) == 1 and paths[0].is_dir():
        files = index_folder(paths[0])
        if not files:
            raise DataError(f"{paths[0]}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")
        return ImageStore(root=paths[0], files=files), sorted(files)
    files: dict[str, str] = {}
    for p in paths:
        if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{p}: not an image file; --images takes one HDF5 file, one folder, or image files "
                            f"({', '.join(IMAGE_SUFFIXES)})")
        if p.stem in files:
            raise DataError(f"{p} and {files[p.stem]} have the same image id {p.stem!r}; ids are file names "
                            "without extension and must be unique")
        files[p.stem] = str(p.resolve())
    return ImageStore(root=Path("/"), files=files), sorted(files)


def read_metadata(csv: Path) -> pd.DataFrame:
    """The metadata CSV with an `image_id` and a `patient_id` column (ISIC 2024, 2019/2020 and
    HAM10000 names are understood). A missing patient_id makes each image its own patient."""
    if not Path(csv).is_file():
        raise DataError(f"{csv}: no such file (--metadata)")
    table = read_csv(Path(csv), dtype={"patient_id": "string"})
    id_col = next((c for c in ID_COLUMNS if c in table.columns), None)
    if id_col is None:
        raise DataError(f"{csv}: no image id column; expected one of {list(ID_COLUMNS)}, found "
                        f"{list(table.columns)[:12]}")
    table = table.rename(columns={id_col: "image_id", **RENAMES})
    table["image_id"] = table["image_id"].astype(str).str.strip().str.replace(r"\.(jpe?g|png)$", "", regex=True)
    dup = table["image_id"].duplicated()
    if dup.any():
        raise DataError(f"{csv}: image id {table['image_id'][dup].iloc[0]!r} appears more than once "
                        f"({int(dup.sum())} duplicates); one row per image")
    if "patient_id" not in table.columns:
        log.warning("%s: no patient_id column; each image is its own patient (patient-relative features "
                    "compare a lesion with the patient's other lesions in this file)", csv)
        table["patient_id"] = table["image_id"]
    table["patient_id"] = table["patient_id"].fillna(table["image_id"]).astype(str)
    return table


@dataclass
class Inputs:
    store: ImageStore
    image_ids: list[str]
    features: pd.DataFrame | None  # selected metadata features, indexed by image_id (rows with metadata)


def prepare_inputs(model: FinalModel, images: Sequence[Path | str], metadata: Path | None) -> Inputs:
    """Open the images (`open_images`) and turn the metadata into the model's features
    (`inputs_for`). The caller closes `Inputs.store`; on an error it is closed here.

    Raises:
        DataError: as `open_images` and `inputs_for`.
    """
    store, ids = open_images(images)
    try:
        return inputs_for(model, store, ids, metadata)
    except BaseException:
        store.close()
        raise


def inputs_for(model: FinalModel, store: ImageStore, ids: list[str], metadata: Path | None) -> Inputs:
    """The model's inputs for the images `ids` of the open `store`: the metadata CSV's rows turned
    into the model's features (None when the model does not use metadata).

    Raises:
        DataError: the model needs metadata and none is given (and it has no image-only
            fallback), images lack a metadata row without a fallback, or a needed column is absent.
    """
    if not model.needs_metadata:
        return Inputs(store, ids, None)
    if metadata is None:
        if model.fallback is None:
            raise DataError(f"model {model.manifest['model']!r} ({model.path}) needs metadata: pass --metadata CSV "
                            "with one row per image (this model has no image-only fallback for images without "
                            "metadata)")
        log.warning("no --metadata: every image is scored by the image-only fallback %s",
                    model.fallback["component"])
        return Inputs(store, ids, None)
    table = read_metadata(metadata)
    known = set(table["image_id"])
    lacking = [i for i in ids if i not in known]
    if lacking and model.fallback is None:
        raise DataError(f"{metadata}: no row for {len(lacking)} of {len(ids)} images, e.g. {lacking[:5]}; add "
                        "their metadata (this model has no image-only fallback)")
    if lacking:
        log.warning("%s: no row for %d images (e.g. %s); they are scored by the image-only fallback %s",
                    metadata, len(lacking), lacking[:3], model.fallback["component"])
    extra = len(known - set(ids))
    if extra:
        log.info("%s: %d rows have no image among --images; they only inform patient-relative features",
                 metadata, extra)
    clean = clean_metadata(table, tuple(model.preprocess["families"]))
    features = apply_preprocessor(model.preprocess, clean, where=str(metadata))
    features.index = table["image_id"].to_numpy()
    return Inputs(store, ids, features.loc[[i for i in ids if i in known]])


class _SafeImages(LesionImages):
    """LesionImages that, with `skip_bad`, turns an unreadable image into a blank one plus an
    error text (the row is reported, not scored)."""

    def __init__(self, *args, skip_bad: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip_bad = skip_bad

    def __getitem__(self, i: int) -> dict:
        try:
            sample = super().__getitem__(i)
            sample["error"] = ""
        except BadImageError as err:
            if not self.skip_bad:
                raise
            size = self.min_side or 32
            sample = {"image": torch.zeros(3, size, size, dtype=torch.uint8), "label": torch.tensor(float("nan")), "error": str(err)}
            if self.meta is not None:
                sample["meta"] = torch.from_numpy(self.meta[i])
        return sample

    def fill(self, images: np.ndarray, keys: list) -> dict:
        """`LesionImages.fill`, with a blank image and the error text for each unreadable one
        (with `skip_bad`; otherwise the error is raised)."""
        errors = []
        for n, key in enumerate(keys):
            try:
                images[n] = as_hwc(self.image(key))
                errors.append("")
            except BadImageError as err:
                if not self.skip_bad:
                    raise
                images[n] = 0
                errors.append(str(err))
        return {"error": errors}


@torch.no_grad()
def score_components(model: FinalModel, components: list[str], store: ImageStore, ids: list[str],
                     meta: np.ndarray | None, device: torch.device, batch_size: int = 64, tta: bool = False,
                     num_workers: int = 0, skip_bad: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    """Probabilities of each image model in `components` for `ids` (mean over the 8 dihedral
    views with `tta` or the model's own `tta`), and per image an error text ("" when it was read). Models that take the
    same image size, resize policy and colour constancy share one pass over the images: each image is read and
    decoded once for all of them (a stack of two 32 px models costs one decode, not two)."""
    device = torch.device(device)
    groups: dict[tuple[int, str, str], list[str]] = {}
    for c in components:
        cfg = model.cnns[c].config
        groups.setdefault((cfg.image_size, cfg.resize, cfg.colour_constancy), []).append(c)
    probs: dict[str, list[np.ndarray]] = {c: [] for c in components}
    errors = [""] * len(ids)
    for (size, _, _), names in groups.items():
        needs_meta = any(model.cnns[c].n_meta for c in names)
        ds = _SafeImages(store, ids, None, model_transforms(model.cnns[names[0]].config, False),
                         meta if needs_meta else None, size, skip_bad=skip_bad)
        nets = {c: model.cnns[c].net.to(device).to(memory_format=torch.channels_last).eval() for c in names}
        seen, start = [], time.perf_counter()
        batches = tqdm(make_loader(ds, batch_size, num_workers, device, index=False), desc=f"predict {'+'.join(names)}",
                       disable=None, mininterval=5)
        score = functools.partial(_score_batch, model, nets, device, tta)
        for scores, batch_errors in on_streams(score, batches, device):
            for c, p in scores.items():
                probs[c].append(p)
            seen += batch_errors
        errors = [a or b for a, b in zip(errors, seen)]
        seconds = time.perf_counter() - start
        log.info("%s %s: %d images in %.1f s (%.0f images/s)", PASS_LOG, "+".join(names), len(ids), seconds,
                 len(ids) / max(seconds, 1e-9))
    return {c: (np.concatenate(v) if v else np.zeros(0)) for c, v in probs.items()}, errors


def _score_batch(model: FinalModel, nets: dict[str, torch.nn.Module], device: torch.device, tta: bool,
                 batch: dict) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each network's probabilities for one batch (the fusion networks with its metadata), and the
    batch's per-image error texts."""
    out = {}
    for c, net in nets.items():
        inputs = batch if model.cnns[c].n_meta else {k: v for k, v in batch.items() if k != "meta"}
        out[c] = forward_prob(net, inputs, device, tta or model.cnns[c].config.tta).cpu().numpy()
    return out, list(batch["error"])


def score_images(model: FinalModel, component: str, store: ImageStore, ids: list[str], meta: np.ndarray | None,
                 device: torch.device, batch_size: int = 64, tta: bool = False, num_workers: int = 0,
                 skip_bad: bool = False) -> tuple[np.ndarray, list[str]]:
    """One image model's probabilities for `ids` and per image an error text (see `score_components`)."""
    scores, errors = score_components(model, [component], store, ids, meta, device, batch_size, tta, num_workers,
                                      skip_bad)
    return scores[component], errors


def predict_cases(model: FinalModel, inputs: Inputs, device: torch.device | str = "cpu", batch_size: int = 64,
                  tta: bool = False, num_workers: int = 0, skip_bad: bool = False) -> pd.DataFrame:
    """One row per image: image_id, probability, decision (1 = malignant), predicted_class (the
    decision in words: the model's prediction, not a ground truth), threshold, model (the bundle's
    model or its image-only fallback) and status ("ok" or why it was not scored)."""
    device = torch.device(device)
    ids = inputs.image_ids
    with_meta = [] if inputs.features is None else list(inputs.features.index)
    has_meta = set(with_meta)
    without = [i for i in ids if i not in has_meta] if model.needs_metadata else []
    main_ids = with_meta if model.needs_metadata else ids
    rows = []
    if main_ids:
        feats = inputs.features.loc[main_ids] if model.needs_metadata else None
        parts, errors = {}, [""] * len(main_ids)
        images = [c for c in model.manifest["components"] if c in model.cnns]
        if model.gbdt:  # the metadata model is a component
            parts[GBDT] = model.score_gbdt(feats)
        if images:
            meta = feats.to_numpy(np.float32) if any(model.cnns[c].n_meta for c in images) else None
            scores, errors = score_components(model, images, inputs.store, main_ids, meta, device, batch_size, tta,
                                              num_workers, skip_bad)
            parts.update(scores)
        parts = {c: parts[c] for c in model.manifest["components"]}  # the bundle's order
        p, decision = model.finish(model.combine(parts, feats))
        rows.append(_frame(main_ids, p, decision, model.manifest["threshold"], model.manifest["model"], errors))
    if without:
        fb = model.fallback
        s, errors = score_images(model, fb["component"], inputs.store, without, None, device, batch_size, tta,
                                 num_workers, skip_bad)
        p, decision = model.finish(s, fallback=True)
        rows.append(_frame(without, p, decision, fb["threshold"], f"{fb['component']} (image-only fallback)", errors))
    out = pd.concat(rows).set_index("image_id").loc[ids].reset_index()
    return out


def _frame(ids: list[str], p: np.ndarray, decision: np.ndarray, threshold: float, model: str,
           errors: list[str]) -> pd.DataFrame:
    bad = np.array([bool(e) for e in errors])
    p = np.where(bad, np.nan, p)
    return pd.DataFrame({
        "image_id": ids, "probability": np.round(p, 6),
        "decision": pd.array(np.where(bad, pd.NA, decision), dtype="Int64"),
        "predicted_class": np.where(bad, "", np.where(decision == 1, "malignant", "benign")),
        "threshold": threshold, "model": model,
        "status": ["ok" if not e else f"unreadable: {e}" for e in errors]})
