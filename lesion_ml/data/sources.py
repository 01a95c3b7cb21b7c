"""Readers that turn a data source into the canonical lesion table plus an image store.

Sources:
    isic2024   train-image.hdf5 (or train-image/image/*.jpg) + train-metadata.csv
    folder     images + a CSV: ISIC 2019 one-hot ground truth, ISIC 2020 target /
               benign_malignant, HAM10000 dx, or a generic file with a 0/1 `target`
    synthetic  the generated demo set, read through the isic2024 reader
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesion_ml.config import DataConfig, FolderConfig
from lesion_ml.data.images import IMAGE_SUFFIXES, ImageStore, Location, check_image_bytes
from lesion_ml.data.schema import CANONICAL_COLUMNS, ISIC2024_COLUMNS
from lesion_ml.errors import BadImageError, DataError

log = logging.getLogger(__name__)

ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
HAM10000_DX = frozenset({"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"})
ID_COLUMNS = ("image_id", "isic_id", "image", "image_name")  # a labels CSV's image id column: the first present
RENAMES = {  # other sources' names -> ISIC 2024 names
    "age": "age_approx",
    "localization": "anatom_site_general",
    "anatom_site_general_challenge": "anatom_site_general",
}


@dataclass
class Ingested:
    """The canonical lesion table, its image store and what ingest noticed."""

    table: pd.DataFrame
    store: ImageStore
    report: dict[str, Any] = field(default_factory=dict)


def read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """pd.read_csv with errors that name the file."""
    if not path.is_file():
        raise DataError(f"{path}: metadata CSV not found (params.yaml data.path / data.metadata_csv)")
    try:
        df = pd.read_csv(path, low_memory=False, **kwargs)
    except UnicodeDecodeError:
        raise DataError(_not_utf8(path)) from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: malformed CSV: {err}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header row and one row per image") from None
    if df.shape[1] == 1:
        header = str(df.columns[0])
        for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
            if sep in header:
                raise DataError(f"{path}: the header {header[:60]!r} looks separated by {name}; lesion-ml reads "
                                "comma-separated CSV: save it with commas")
    return df


def _not_utf8(path: Path) -> str:
    """Where a file stops being UTF-8 (pandas reports offsets within its read buffer, not the file)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return f"{path}: not UTF-8 text; save the CSV as UTF-8"
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return (f"{path}: not UTF-8 text: line {line}, byte {err.start} is 0x{data[err.start]:02x} ({err.reason}); "
                "save the CSV as UTF-8 (it looks like Latin-1/Windows-1252 if the byte is a letter)")


def read_isic2024(root: Path, metadata_csv: str = "train-metadata.csv", source: str = "isic2024",
                  image_dir: str | None = None) -> Ingested:
    """Read an ISIC 2024 style folder: an HDF5 of JPEG bytes and/or a folder of <isic_id>.jpg
    (`image_dir`, by default train-image/image or images)."""
    csv = root / metadata_csv
    dtypes = {c: "object" for c, t in ISIC2024_COLUMNS.items() if t == "object"}
    meta = read_csv(csv, dtype={**dtypes, "target": "string"})
    _require(meta, ["isic_id", "target"], csv)
    h5 = root / "train-image.hdf5"
    candidates = [image_dir] if image_dir else ["train-image/image", "images"]
    folder = next((root / c for c in candidates if (root / c).is_dir()), root / candidates[0])
    files = index_folder(folder) if folder.is_dir() else {}
    if not h5.is_file() and not files:
        raise DataError(f"{root}: no images: expected train-image.hdf5 or {folder.relative_to(root)}/*.jpg "
                        "(params.yaml data.path, data.image_dir)")
    store = ImageStore(hdf5=h5 if h5.is_file() else None, root=folder if files else None, files=files)
    table = canonical_table(meta.rename(columns={"isic_id": "image_id"}), source, csv)
    unexpected = [c for c in meta.columns if c not in ISIC2024_COLUMNS]
    if unexpected:
        log.warning("%s: %d column(s) outside the ISIC 2024 schema, kept as metadata candidates: %s", csv,
                    len(unexpected), unexpected[:10])
    return Ingested(table, store, {"metadata_csv": str(csv), "unexpected_columns": unexpected})


@dataclass(frozen=True)
class LabelRemedy:
    """What a labels CSV's errors tell the user to change, in the user's own interface: params.yaml
    keys for the pipeline (`PIPELINE`), flags for `lesion validate` (`VALIDATE`).

    Attributes:
        format: where the CSV format is set.
        diagnosis: what to do about a diagnosis that is neither a known benign nor a malignant one.
        folds: whether the table is split into folds (the log then says how lesions are grouped).
    """

    format: str = "params.yaml data.folder.format"
    diagnosis: str = "map it in params.yaml data.folder.malignant or fix the CSV"
    folds: bool = True


PIPELINE = LabelRemedy()
VALIDATE = LabelRemedy(format="--format", diagnosis="give the CSV a 0/1 target column (an explicit target is "
                       "read as the label, whatever other columns it has) or fix the CSV", folds=False)


def detect_format(columns: pd.Index, remedy: LabelRemedy = PIPELINE) -> str:
    """Guess the folder CSV format from its columns. An explicit `target` column wins: a file with
    target and dx is a generic file whose dx is only a description."""
    cols = set(columns)
    if "image_name" in cols and ({"target", "benign_malignant"} & cols):
        return "isic2020"
    if "target" in cols:
        return "generic"
    if "dx" in cols and "image_id" in cols:
        return "ham10000"
    if "image" in cols and {"MEL", "NV"} <= cols:
        return "isic2019"
    raise DataError(f"cannot tell the CSV format from its columns {sorted(cols)[:12]}; expected HAM10000 "
                    "(image_id, dx), ISIC 2019 (image, MEL, NV, ...), ISIC 2020 (image_name, target) or "
                    f"a generic file with target and image_file/image_id; or name the format with {remedy.format}")


def parse_labels(meta: pd.DataFrame, cfg: FolderConfig, csv: Path,
                 remedy: LabelRemedy = PIPELINE) -> tuple[pd.DataFrame, str]:
    """A labels table of any folder format (HAM10000, ISIC 2019/2020, generic) with `image_id`,
    a 0/1-mappable `target` and, when the format groups lesions, `patient_id`; and the format.
    Image paths are not resolved here (`image_file` is kept when the CSV has it). Errors name the
    fix in `remedy`'s terms."""
    fmt = detect_format(meta.columns, remedy) if cfg.format == "auto" else cfg.format
    malignant = {m.lower() for m in cfg.malignant}
    if fmt == "ham10000":
        _require(meta, ["image_id", "dx"], csv)
        table = meta.copy()
        table["target"] = _map_diagnosis(meta["dx"], malignant, csv, "dx", allowed=HAM10000_DX | malignant,
                                         remedy=remedy.diagnosis)
    elif fmt == "isic2019":
        _require(meta, ["image", "MEL", "NV"], csv)
        classes = [c for c in ISIC2019_CLASSES if c in meta.columns]
        onehot = meta[classes].to_numpy(dtype=float)
        bad = np.flatnonzero(onehot.sum(1) != 1)
        if bad.size:
            raise DataError(f"{csv}: row {bad[0] + 2}: one-hot ground truth must have exactly one 1 among "
                            f"{classes}, found {onehot[bad[0]].tolist()} ({bad.size} such rows)")
        dx = pd.Series(np.array(classes)[onehot.argmax(1)], index=meta.index)
        table = meta.rename(columns={"image": "image_id"}).drop(columns=classes)
        table["diagnosis"] = dx
        table["target"] = _map_diagnosis(dx, malignant, csv, "one-hot class")
    elif fmt == "isic2020":
        table = meta.rename(columns={"image_name": "image_id"})
        if "target" not in table and "benign_malignant" in table:
            table["target"] = _map_diagnosis(table["benign_malignant"], {"malignant"}, csv, "benign_malignant",
                                             allowed={"benign", "malignant"})
    else:
        id_col = next((c for c in ID_COLUMNS if c in meta.columns), None)
        if id_col is None and "image_file" not in meta.columns:
            raise DataError(f"{csv}: no image column; expected one of image_file, image_id, isic_id, image")
        table = meta.rename(columns={id_col: "image_id"}) if id_col else meta.copy()
        if id_col is None:
            table["image_id"] = [Path(str(f)).stem for f in meta["image_file"]]
    group = cfg.group_column or ("lesion_id" if "patient_id" not in table and "lesion_id" in table else None)
    if group:
        _require(table, [group], csv)
        if remedy.folds:
            log.info("%s: grouping folds by %s (one group per %s)", csv, group, group)
        table["patient_id"] = table[group].astype("object")
    return table, fmt


def read_folder(root: Path, cfg: FolderConfig) -> Ingested:
    """Read a folder of images plus a labels CSV into the canonical table."""
    csv = root / cfg.csv
    table, fmt = parse_labels(read_csv(csv, dtype={"target": "string"}), cfg, csv)
    images_dir = root / cfg.images
    files = _folder_files(table, images_dir, root, csv)
    table = table.rename(columns=RENAMES).drop(columns=["image_file"], errors="ignore")
    table = canonical_table(table, fmt if fmt != "generic" else "folder", csv)
    return Ingested(table, ImageStore(root=root, files=files), {"metadata_csv": str(csv), "format": fmt})


def _folder_files(table: pd.DataFrame, images_dir: Path, root: Path, csv: Path) -> dict[str, str]:
    """id -> path relative to `root`; CSV paths may not leave the data folder."""
    root_real = root.resolve()
    if "image_file" in table.columns:
        files = {}
        for i, (image_id, rel) in enumerate(zip(table["image_id"], table["image_file"])):
            path = (root / str(rel)).resolve()
            if not path.is_relative_to(root_real):
                raise DataError(f"{csv}: row {i + 2}: image_file {rel!r} points outside the data folder "
                                f"{root}; image paths must stay inside it")
            files[str(image_id)] = os.path.relpath(path, root_real)
        return files
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found (params.yaml data.folder.images)")
    found = index_folder(images_dir)
    prefix = os.path.relpath(images_dir, root)
    return {k: os.path.join(prefix, v) for k, v in found.items()}


def index_folder(folder: Path) -> dict[str, str]:
    """Map file stem -> path relative to `folder` for every image file below it (searched
    recursively, in sorted order; of two files with one stem the first is kept)."""
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            out.setdefault(path.stem, str(path.relative_to(folder)))
    return out


def _map_diagnosis(values: pd.Series, malignant: set[str], csv: Path, column: str,
                   allowed: set[str] | None = None, remedy: str = PIPELINE.diagnosis) -> pd.Series:
    text = values.astype("string").str.strip().str.lower()
    if allowed is not None:
        bad = text[~text.isin(allowed)]
        if len(bad):
            raise DataError(f"{csv}: row {bad.index[0] + 2}: {column} {values[bad.index[0]]!r} is not one of "
                            f"{sorted(allowed)} ({len(bad)} such rows); {remedy}")
    missing = text[text.isna()]
    if len(missing):
        raise DataError(f"{csv}: row {missing.index[0] + 2}: {column} is empty ({len(missing)} such rows); "
                        "every image needs a diagnosis")
    return text.isin(malignant).astype("int64")


def _require(df: pd.DataFrame, columns: list[str], csv: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{csv}: missing required column(s) {missing}; found {list(df.columns)[:15]}")


def _parse_target(values: pd.Series, csv: Path) -> pd.Series:
    """0/1 labels; anything else (2, "1.0", "malignant", empty) is an error naming the row."""
    text = values.astype("string").str.strip()
    bad = ~text.isin(["0", "1"]).fillna(False)
    numeric = pd.to_numeric(text.where(~bad, "0"))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{csv}: row {i + 2}: target {str(values.iloc[i])!r} is not allowed; target must be "
                        f"0 (benign) or 1 (malignant) ({int(bad.sum())} bad rows)")
    return numeric.astype("int64")


def canonical_table(table: pd.DataFrame, source: str, csv: Path, folds: bool = True) -> pd.DataFrame:
    """The canonical lesion table (CANONICAL_COLUMNS first, then the rest) of a table read from
    `csv` with image_id and target columns: ids stripped and unique, targets 0/1, a missing
    patient_id filled with the image's id, `source` recorded. `folds`: the table is split into
    folds (what a missing patient_id means is said in those terms; `LabelRemedy.folds`).

    Raises:
        DataError: naming `csv` and the row: no rows, a required column missing, a duplicated id,
            a target other than 0 or 1.
    """
    if table.empty:
        raise DataError(f"{csv}: no rows; the data set is empty")
    _require(table, ["image_id", "target"], csv)
    table = table.copy()
    table["image_id"] = table["image_id"].astype("string").str.strip()
    dup = table["image_id"].duplicated(keep=False)
    if dup.any():
        rows = (np.flatnonzero(dup.to_numpy()) + 2).tolist()
        raise DataError(f"{csv}: duplicated image id {table['image_id'][dup].iloc[0]!r} at rows {rows[:6]} "
                        f"({int(dup.sum())} rows share an id); ids must be unique")
    table["target"] = _parse_target(table["target"], csv)
    if "patient_id" not in table.columns or table["patient_id"].isna().all():
        log.warning("%s: no patient_id; treating each image as its own patient (%s)", csv,
                    "folds cannot group lesions of one patient" if folds else "the intervals resample images")
        table["patient_id"] = table["image_id"]
    elif table["patient_id"].isna().any():
        n = int(table["patient_id"].isna().sum())
        log.warning("%s: %d rows without patient_id; each becomes its own patient", csv, n)
        table["patient_id"] = table["patient_id"].fillna(table["image_id"])
    table["patient_id"] = table["patient_id"].astype("string")
    table["source"] = source
    rest = [c for c in table.columns if c not in CANONICAL_COLUMNS]
    return table[list(CANONICAL_COLUMNS) + rest].reset_index(drop=True)


def check_images(ing: Ingested, on_bad_image: str, verify: str) -> Ingested:
    """Match rows to images and check each image; apply `on_bad_image` ("error" or "skip").

    Rows whose image is missing or corrupt raise BadImageError, or are dropped and listed in the
    report under "skipped". Images without a row are counted in the report and logged.
    """
    table, store = ing.table, ing.store
    available = store.ids()
    bad: list[dict[str, str]] = []
    for image_id in table["image_id"]:
        if image_id not in available:
            bad.append({"image_id": image_id, "reason": "no image with this id in the image store"})
            continue
        try:
            check_image_bytes(store.read_bytes(image_id), Location(store, image_id), verify)
        except BadImageError as err:
            bad.append({"image_id": image_id, "reason": str(err)})
    if bad and on_bad_image == "error":
        first = bad[0]
        raise BadImageError(f"{len(bad)} of {len(table)} rows have a missing or bad image; first: "
                            f"{first['image_id']!r}: {first['reason']} "
                            "(params.yaml data.on_bad_image: skip drops them and lists them in reports/ingest.json)")
    if bad:
        log.warning("skipping %d rows with a missing or bad image (data.on_bad_image: skip)", len(bad))
        table = table[~table["image_id"].isin({b["image_id"] for b in bad})].reset_index(drop=True)
    unlisted = len(available - set(table["image_id"]) - {b["image_id"] for b in bad})
    if unlisted:
        log.warning("%d images have no metadata row and are ignored", unlisted)
    report = dict(ing.report, skipped=bad, images_without_row=unlisted)
    return Ingested(table, store, report)


def check_classes(table: pd.DataFrame, where: str) -> None:
    """A classifier needs rows, and both classes."""
    if table.empty:
        raise DataError(f"{where}: no rows left after dropping bad images; the data set is empty")
    counts = table["target"].value_counts()
    if len(counts) < 2:
        only = int(counts.index[0])
        raise DataError(f"{where}: only target={only} present ({int(counts.iloc[0])} rows); "
                        "training needs both benign (0) and malignant (1) examples")


def summarise(table: pd.DataFrame) -> dict[str, Any]:
    return {
        "n_images": int(len(table)),
        "n_patients": int(table["patient_id"].nunique()),
        "n_malignant": int(table["target"].sum()),
        "malignant_fraction": float(table["target"].mean()),
        "sources": sorted(table["source"].unique().tolist()),
    }


def ingest(cfg: DataConfig, synthetic_dir: Path | None = None) -> Ingested:
    """Read the configured source, check every image, and return the canonical table.

    For `source: synthetic` the demo set must already exist in `synthetic_dir`
    (see lesion_ml.data.synthetic.generate_synthetic).
    """
    if cfg.source == "synthetic":
        if synthetic_dir is None:
            raise ValueError("synthetic source needs synthetic_dir")
        ing = read_isic2024(synthetic_dir, "train-metadata.csv", source="synthetic")
    elif cfg.source == "isic2024":
        ing = read_isic2024(Path(cfg.path), cfg.metadata_csv, image_dir=cfg.image_dir)
    else:
        ing = read_folder(Path(cfg.path), cfg.folder)
    ing = check_images(ing, cfg.on_bad_image, cfg.verify_images)
    check_classes(ing.table, ing.report.get("metadata_csv", cfg.path))
    ing.report.update(summarise(ing.table))
    return ing


def count_metadata_columns(lesions: Path) -> int:
    """How many columns the source offered, the canonical image_id/source columns aside
    (55 for ISIC 2024: its isic_id became image_id)."""
    import pyarrow.parquet as pq

    cols = pq.read_schema(lesions).names  # the schema only: no need to load 400k rows
    return int(len([c for c in cols if c != "source"]))
