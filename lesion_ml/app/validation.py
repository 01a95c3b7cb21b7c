"""External validation's reading and writing, for `lesion validate` (app/cli.py) and stage
validate@<name> (tasks/validate.py) alike: read the model folder, the images, the labels and the
metadata; score and figure them with lesion_ml.model.validate (data in, data out); write the
report, the per-image scores and the figures (artefacts.VALIDATION_FILES) and, on request, a
recalibrated copy of the model folder, each atomically (lesion_ml.io).
"""
from __future__ import annotations

import json
import shutil
from contextlib import closing
from pathlib import Path
from typing import Any

from lesion_ml.artefacts import VALIDATION_FILES
from lesion_ml.config import FolderConfig
from lesion_ml.data.sources import read_csv
from lesion_ml.errors import DataError
from lesion_ml.image.inference import select_device
from lesion_ml.io import atomic_folder, write_csv, write_json, write_text
from lesion_ml.model.bundle import FinalModel, inside
from lesion_ml.model.predict import inputs_for, open_images
from lesion_ml.model.validate import LabelledSet, Validation, match_labels, recalibrated, score_labelled


def read_labelled_set(labels: Path | str, image_ids: list[str], fmt: str = "auto",
                      malignant: tuple[str, ...] = FolderConfig().malignant,
                      ignore_unlabelled: bool = False) -> LabelledSet:
    """The labels CSV (`fmt`: auto, generic, ham10000, isic2019, isic2020: the folder source's
    formats) matched with the ids of the images found under --images (`match_labels`).

    Raises:
        DataError: the CSV is missing or unreadable, or as `match_labels`.
    """
    labels = Path(labels)
    if not labels.is_file():
        raise DataError(f"{labels}: no such file (--labels)")
    raw = read_csv(labels, dtype={"target": "string", "patient_id": "string"})
    return match_labels(raw, image_ids, labels, fmt=fmt, malignant=malignant, ignore_unlabelled=ignore_unlabelled)


def write_validation(out: Path | str, validation: Validation) -> None:
    """validation.json, predictions.csv and report.html (artefacts.VALIDATION_FILES) in `out`,
    each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(validation.predictions, out / VALIDATION_FILES["predictions"])
    write_text(validation.report, out / VALIDATION_FILES["report"])
    write_json(validation.result, out / VALIDATION_FILES["validation"])


def export_recalibrated(model: FinalModel, dest: Path | str, res: dict[str, Any], labels: Path) -> Path:
    """Write a copy of the model folder with the local threshold of `res["local_threshold"]`
    recorded in its manifest and model card (`recalibrated`) to the new folder `dest`, atomically.

    Raises:
        DataError: `dest` is the model folder itself or already exists (nothing is overwritten).
    """
    src, dest = Path(model.path), Path(dest)
    if dest.resolve() == src.resolve():
        raise DataError(f"--export {dest} is the model folder itself; the original is never overwritten: name a "
                        "new folder")
    if dest.exists():
        raise DataError(f"--export {dest} already exists; name a new folder (or remove it first)")
    manifest = json.loads(inside(src, "manifest.json", "the manifest").read_text())
    with atomic_folder(dest) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, symlinks=False)
        card = (tmp / "MODEL_CARD.md").read_text() if (tmp / "MODEL_CARD.md").is_file() else ""
        manifest, card = recalibrated(manifest, card, res=res, labels=labels)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, allow_nan=False) + "\n")
        (tmp / "MODEL_CARD.md").write_text(card)
    return dest


def run_validation(model_dir: Path | str, *, images: list[Path | str], labels: Path | str, out: Path | str,
                   metadata: Path | str | None = None, fmt: str = "auto", ignore_unlabelled: bool = False,
                   tta: bool = False, n_boot: int = 1000, device: str = "auto", batch_size: int = 64,
                   workers: int = 0, target_sensitivity: float | None = None,
                   export: Path | str | None = None) -> dict[str, Any]:
    """Score the labelled set with the model folder and write validation.json, predictions.csv and
    report.html to `out`; with `export` (and `target_sensitivity`), also the recalibrated copy.
    Returns the figures (validation.json's content).

    Metadata comes from `metadata`, else, when the model needs it, from the labels CSV itself
    (HAM10000, ISIC 2019/2020 and ISIC 2024 label files carry age, sex and site).
    """
    if export is not None and target_sensitivity is None:
        raise DataError("--export writes a recalibrated copy of the model: add --recalibrate (and optionally "
                        "--target-sensitivity)")
    dev = select_device(device)
    model = FinalModel.load(model_dir, dev)
    store, image_ids = open_images(images)
    with closing(store):
        labelled = read_labelled_set(labels, image_ids, fmt, ignore_unlabelled=ignore_unlabelled)
        from_labels = metadata is None and model.needs_metadata
        if from_labels:
            metadata = labels
        try:
            inputs = inputs_for(model, store, image_ids, metadata=Path(metadata) if metadata else None)
        except DataError as err:
            if not from_labels:
                raise
            raise DataError(f"{err} (model {model.manifest['model']!r} uses metadata, read from --labels since no "
                            "--metadata was given: pass --metadata CSV with those columns, empty values "
                            "allowed)") from None
        validation = score_labelled(model, inputs, labelled, device=dev, batch_size=batch_size, tta=tta,
                                    workers=workers, n_boot=n_boot, target_sensitivity=target_sensitivity)
    res = validation.result
    write_validation(out, validation)
    if export is not None:
        res["exported"] = str(export_recalibrated(model, export, res=res, labels=Path(labels)))
        write_json(res, Path(out) / VALIDATION_FILES["validation"])
    return res
