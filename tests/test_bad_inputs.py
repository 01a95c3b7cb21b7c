"""The bad-input catalogue: every case gets an error that names the file, row or key, the value
found and what is allowed, or a documented skip that is reported. One test per case; the ids
are the catalogue (docs/pipeline.md, "Bad input").
"""
from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

from lesion_ml.config import ConfigError, DataConfig, FolderConfig, SplitConfig, validate_params
from lesion_ml.data.images import BadImageError, ImageStore
from lesion_ml.data.sources import DataError, ingest
from lesion_ml.data.split import assign_folds
from lesion_ml.data.synthetic import generate_synthetic
from lesion_ml.image.train import create_transforms


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


GREY = np.full((24, 24, 3), 120, np.uint8)


def _folder(tmp: Path, csv_text: str, images: dict[str, bytes] | None = None, **folder) -> DataConfig:
    """labels.csv with `csv_text` plus images/<id>.png for `images` (default: IMG_0..IMG_3)."""
    (tmp / "images").mkdir(exist_ok=True)
    for name, data in (images if images is not None else {f"IMG_{i}": _png(GREY) for i in range(4)}).items():
        (tmp / "images" / f"{name}.png").write_bytes(data)
    (tmp / "labels.csv").write_bytes(csv_text.encode() if isinstance(csv_text, str) else csv_text)
    return DataConfig(source="folder", path=str(tmp), folder=FolderConfig(**folder))


GOOD_CSV = "image_id,target,patient_id\nIMG_0,0,P0\nIMG_1,1,P0\nIMG_2,0,P1\nIMG_3,1,P1\n"


def _isic(tmp: Path, edit: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> Path:
    """A tiny generated ISIC 2024-format folder, its metadata changed by `edit`."""
    generate_synthetic(tmp, TINY)
    if edit is not None:
        meta = pd.read_csv(tmp / "train-metadata.csv", dtype=str)
        edit(meta).to_csv(tmp / "train-metadata.csv", index=False)
    return tmp


def _ingest_isic(tmp: Path) -> None:
    ingest(DataConfig(source="isic2024", path=str(tmp)))


# --- CSV files -------------------------------------------------------------------------------

def test_01_malformed_csv(tmp_path):
    cfg = _folder(tmp_path, GOOD_CSV + "IMG_4,0,P2,extra,fields\n")
    with pytest.raises(DataError, match=r"labels.csv: malformed CSV: .*Expected 3 fields in line 6, saw 5"):
        ingest(cfg)


def test_02_wrong_delimiter(tmp_path):
    cfg = _folder(tmp_path, GOOD_CSV.replace(",", ";"))
    with pytest.raises(DataError, match=r"labels.csv: the header 'image_id;target;patient_id' looks separated by "
                                        r"semicolons; lesion-ml reads comma-separated CSV"):
        ingest(cfg)


def test_03_non_utf8_csv(tmp_path):
    cfg = _folder(tmp_path, GOOD_CSV.replace("P1", "Pé").encode("latin-1"))
    with pytest.raises(DataError, match=r"labels.csv: not UTF-8 text: line 4, byte 58 is 0xe9 \(invalid "
                                        r"continuation byte\); save the CSV as UTF-8"):
        ingest(cfg)


def test_04_empty_csv_file(tmp_path):
    cfg = _folder(tmp_path, "")
    with pytest.raises(DataError, match="labels.csv: the file is empty; expected a header row"):
        ingest(cfg)


def test_05_header_only_csv(tmp_path):
    cfg = _folder(tmp_path, "image_id,target\n", images={})
    with pytest.raises(DataError, match="labels.csv: no rows; the data set is empty"):
        ingest(cfg)


def test_06_missing_required_column(tmp_path):
    root = _isic(tmp_path, lambda m: m.drop(columns=["target"]))
    with pytest.raises(DataError, match=r"train-metadata.csv: missing required column\(s\) \['target'\]; found"):
        _ingest_isic(root)


def test_07_unexpected_columns_are_reported(tmp_path, caplog):
    root = _isic(tmp_path, lambda m: m.assign(scanner_notes="x", ward="B"))
    with caplog.at_level(logging.WARNING):
        ing = ingest(DataConfig(source="isic2024", path=str(root)))
    assert ing.report["unexpected_columns"] == ["scanner_notes", "ward"]
    assert "2 column(s) outside the ISIC 2024 schema" in caplog.text


def test_08_unknown_csv_format(tmp_path):
    cfg = _folder(tmp_path, "picture,label\nIMG_0,1\n")
    with pytest.raises(DataError, match=r"cannot tell the CSV format from its columns \['label', 'picture'\]"):
        ingest(cfg)


def test_09_text_in_a_numeric_column(tmp_path):
    from lesion_ml.tabular.prepare import clean_metadata

    root = _isic(tmp_path, lambda m: m.assign(age_approx=m["age_approx"].where(m.index != 3, "forty")))
    ing = ingest(DataConfig(source="isic2024", path=str(root)))
    bad_id = ing.table["image_id"][3]
    with pytest.raises(ValueError, match=rf"column 'age_approx', row 3 \(image_id '{bad_id}'\): value 'forty' is "
                                         r"not a number; 1 such values"):
        clean_metadata(ing.table)


def test_10_unknown_category_spelling(tmp_path):
    from lesion_ml.tabular.prepare import clean_metadata

    root = _isic(tmp_path, lambda m: m.assign(sex=m["sex"].where(m.index != 2, "unknown-ish")))
    ing = ingest(DataConfig(source="isic2024", path=str(root)))
    with pytest.raises(ValueError, match=r"column 'sex', row 2 \(image_id 'ISIC_\d+'\): unknown category "
                                         r"'unknown-ish'; allowed \(any case\): \['female', 'male'\]"):
        clean_metadata(ing.table)


# --- labels and ids ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["malignant", "1.0", "2", "-1", "yes"])
def test_11_text_or_out_of_range_target(tmp_path, bad):
    cfg = _folder(tmp_path, GOOD_CSV.replace("IMG_2,0", f"IMG_2,{bad}"))
    with pytest.raises(DataError, match=rf"labels.csv: row 4: target '{bad}' is not allowed; target must be 0 "
                                        r"\(benign\) or 1 \(malignant\)"):
        ingest(cfg)


def test_12_empty_target(tmp_path):
    cfg = _folder(tmp_path, GOOD_CSV.replace("IMG_1,1", "IMG_1,"))
    with pytest.raises(DataError, match=r"labels.csv: row 3: target '<NA>' is not allowed"):
        ingest(cfg)


def test_13_duplicated_ids(tmp_path):
    cfg = _folder(tmp_path, GOOD_CSV.replace("IMG_3", "IMG_1"))
    with pytest.raises(DataError, match=r"duplicated image id 'IMG_1' at rows \[3, 5\]"):
        ingest(cfg)


def test_14_single_class(tmp_path):
    cfg = _folder(tmp_path, GOOD_CSV.replace(",1,", ",0,"))
    with pytest.raises(DataError, match=r"only target=0 present \(4 rows\)"):
        ingest(cfg)


def test_15_unmapped_diagnosis(tmp_path):
    cfg = _folder(tmp_path, "image_id,dx,lesion_id\nIMG_0,nv,L0\nIMG_1,mel,L1\nIMG_2,melanoma?,L2\n")
    with pytest.raises(DataError, match=r"row 4: dx 'melanoma\?' is not one of \['ak', 'akiec'"):
        ingest(cfg)


def test_16_one_hot_ground_truth_with_two_classes(tmp_path):
    csv = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC\nIMG_0,1,0,0,0,0,0,0,0\nIMG_1,1,1,0,0,0,0,0,0\n"
    with pytest.raises(DataError, match=r"row 3: one-hot ground truth must have exactly one 1"):
        ingest(_folder(tmp_path, csv))


def test_17_fewer_patients_than_folds():
    table = pd.DataFrame({"image_id": list("abcd"), "patient_id": ["p", "p", "q", "q"], "target": [0, 1, 0, 1]})
    with pytest.raises(DataError, match="2 patients cannot fill 5 patient-grouped folds; lower params.yaml "
                                        "split.n_folds"):
        assign_folds(table, SplitConfig(n_folds=5))


# --- images -----------------------------------------------------------------------------------

def test_18_hdf5_key_without_a_row_is_counted_and_reported(tmp_path, caplog):
    root = _isic(tmp_path, lambda m: m.iloc[1:])
    with caplog.at_level(logging.WARNING):
        ing = ingest(DataConfig(source="isic2024", path=str(root)))
    assert ing.report["images_without_row"] == 1 and "1 images have no metadata row" in caplog.text


def test_19_row_without_an_hdf5_key(tmp_path):
    root = _isic(tmp_path)
    first = pd.read_csv(root / "train-metadata.csv")["isic_id"][0]
    with h5py.File(root / "train-image.hdf5", "a") as h5:
        del h5[first]
    with pytest.raises(BadImageError, match=rf"1 of \d+ rows .* first: '{first}': no image with this id"):
        _ingest_isic(root)
    ing = ingest(DataConfig(source="isic2024", path=str(root), on_bad_image="skip"))
    assert ing.report["skipped"][0]["image_id"] == first and first not in set(ing.table["image_id"])


def test_20_truncated_jpeg(tmp_path):
    jpg = cv2.imencode(".jpg", GREY)[1].tobytes()
    images = {f"IMG_{i}": _png(GREY) for i in range(4)} | {"IMG_2": jpg[: len(jpg) // 2]}
    with pytest.raises(BadImageError, match=r"IMG_2.png: truncated JPEG \(no end-of-image marker, \d+ bytes\)"):
        ingest(_folder(tmp_path, GOOD_CSV, images))


def test_21_not_an_image(tmp_path):
    images = {f"IMG_{i}": _png(GREY) for i in range(4)} | {"IMG_3": b"%PDF-1.4 not an image"}
    with pytest.raises(BadImageError, match=r"IMG_3.png: cannot decode image \(21 bytes\); expected JPEG or PNG"):
        ingest(_folder(tmp_path, GOOD_CSV, images))


def test_22_empty_image_folder(tmp_path):
    with pytest.raises(BadImageError, match=r"4 of 4 rows .* first: 'IMG_0': no image with this id"):
        ingest(_folder(tmp_path, GOOD_CSV, images={}))


def test_23_missing_image_folder(tmp_path):
    (tmp_path / "labels.csv").write_text(GOOD_CSV)
    with pytest.raises(DataError, match=r"images: image folder not found \(params.yaml data.folder.images\)"):
        ingest(DataConfig(source="folder", path=str(tmp_path)))


def test_24_no_hdf5_and_no_image_folder(tmp_path):
    root = _isic(tmp_path)
    (root / "train-image.hdf5").unlink()
    with pytest.raises(DataError, match=r"no images: expected train-image.hdf5 or train-image/image/\*.jpg"):
        _ingest_isic(root)


def test_25_hdf5_value_that_is_not_image_bytes(tmp_path):
    with h5py.File(tmp_path / "x.hdf5", "w") as h5:
        h5["ISIC_1"] = np.float32(3.5)
    with pytest.raises(BadImageError, match="HDF5 value of type float32 is not encoded image bytes"):
        ImageStore(hdf5=tmp_path / "x.hdf5").get("ISIC_1")


@pytest.mark.parametrize("kind", ["png_alpha", "grayscale_png", "grayscale_jpeg", "png_16bit", "one_pixel"])
def test_26_unusual_but_valid_images_become_rgb_uint8(tmp_path, kind):
    img = {"png_alpha": lambda: cv2.imencode(".png", np.dstack([GREY, np.full((24, 24), 7, np.uint8)]))[1],
           "grayscale_png": lambda: cv2.imencode(".png", GREY[..., 0])[1],
           "grayscale_jpeg": lambda: cv2.imencode(".jpg", GREY[..., 0])[1],
           "png_16bit": lambda: cv2.imencode(".png", (GREY.astype(np.uint16) * 257))[1],
           "one_pixel": lambda: cv2.imencode(".png", GREY[:1, :1])[1]}[kind]().tobytes()
    images = {f"IMG_{i}": _png(GREY) for i in range(4)} | {"IMG_1": img}
    ing = ingest(_folder(tmp_path, GOOD_CSV, images, ), )
    rgb = ing.store.get("IMG_1")
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert abs(int(rgb.mean()) - 120) <= 2  # alpha dropped, 16-bit scaled to 8-bit
    x = create_transforms(32, True)(image=rgb)["image"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8


# Peak RSS from /proc (VmHWM): getrusage's ru_maxrss survives exec, so a child of a big parent
# would start with the parent's peak.
DECODE_RSS = r"""
import sys
sys.path.insert(0, {repo!r})
from lesion_ml.data.images import decode_image

def peak_kib():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

data = open({path!r}, "rb").read()
before = peak_kib()
img = decode_image(data, "big.jpg", min_side={min_side})
print(img.shape[0], img.shape[1], (peak_kib() - before) // 1024)
"""


def test_27_ten_thousand_pixel_jpeg_decodes_in_bounded_memory(tmp_path):
    from conftest import REPO

    big = np.full((10_000, 10_000, 3), 150, np.uint8)
    big[::97] = 30
    (tmp_path / "big.jpg").write_bytes(cv2.imencode(".jpg", big)[1].tobytes())
    del big

    def run(min_side):
        code = DECODE_RSS.format(repo=str(REPO), path=str(tmp_path / "big.jpg"), min_side=min_side)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return [int(v) for v in out.stdout.split()]

    h, w, mib = run(128)
    assert (h, w) == (1250, 1250) and mib < 60  # 1/8-scale decode: ~5 MiB of pixels
    h_full, _, mib_full = run("None")
    assert h_full == 10_000 and mib_full > 250  # what a full decode would have cost


@pytest.mark.parametrize("escape", ["../../etc/passwd", "/etc/passwd", "link/passwd"])
def test_28_image_path_escaping_the_data_folder(tmp_path, escape):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "link").symlink_to("/etc")  # a symlink inside the folder that leads out of it
    (tmp_path / "d" / "labels.csv").write_text(f"image_file,target\n{escape},0\nx.png,1\n")
    with pytest.raises(DataError, match=rf"row 2: image_file '{escape}' points outside the data folder"):
        ingest(DataConfig(source="folder", path=str(tmp_path / "d")))


# --- params -----------------------------------------------------------------------------------

def test_29_params_typo():
    with pytest.raises(ConfigError, match=r"train_cnn.models.r.learning_rate: unknown key \(value 0.1\); check "
                                          "the spelling"):
        validate_params({"train_cnn": {"models": {"r": {"learning_rate": 0.1}}}})


def test_30_negative_learning_rate():
    with pytest.raises(ConfigError, match=r"train_cnn.models.r.lr: Input should be greater than 0 \(found -0.1\)"):
        validate_params({"train_cnn": {"models": {"r": {"lr": -0.1}}}})


def test_31_unknown_backbone():
    with pytest.raises(ConfigError, match=r"train_cnn.models.r.backbone: Input should be 'resnet18', .*"
                                          r"'efficientnet-lite0' \(found 'vit-b16'\)"):
        validate_params({"train_cnn": {"models": {"r": {"backbone": "vit-b16"}}}})


def test_32_missing_pretrained_weight_file(monkeypatch, tmp_path):
    from lesion_ml.image.backbones import PretrainedWeightsMissing, create_backbone

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(PretrainedWeightsMissing, match=r"ImageNet weights for efficientnet-b0 are not on this "
                                                       r"machine: put efficientnet-b0-355c32eb.pth at"):
        create_backbone("efficientnet-b0", pretrained="true")


def test_33_one_fold():
    with pytest.raises(ConfigError, match=r"split.n_folds: Input should be greater than or equal to 2 \(found 1\)"):
        validate_params({"split": {"n_folds": 1}})


def test_34_warmup_not_below_epochs():
    with pytest.raises(ConfigError, match=r"warmup_epochs \(4\) must be below epochs \(4\)"):
        validate_params({"train_cnn": {"models": {"r": {"epochs": 4, "warmup_epochs": 4}}}})


def test_35_params_file_not_a_mapping(tmp_path):
    from lesion_ml.config import load_params

    (tmp_path / "params.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="params.yaml: expected a mapping of sections, found list"):
        load_params(tmp_path / "params.yaml")


def test_36_minority_set_requested_but_empty(tmp_path):
    from lesion_ml.config import CnnModelConfig
    from lesion_ml.image.data import fold_data

    f = pd.DataFrame({"image_id": ["a", "b"], "patient_id": ["p", "q"], "target": [1, 0], "fold": [0, 1]})
    with pytest.raises(ValueError, match=r"balance.minority_set is on but .*minority holds no copies; set "
                                         "params.yaml train_cnn.minority_set.copies above 0"):
        fold_data(f, np.array([True, False]), CnnModelConfig(balance={"minority_set": True}),
                  minority_index=pd.DataFrame({"copy_id": [], "source_id": []}, dtype=str),
                  minority_source=str(tmp_path / "minority"))


# The catalogue of docs/pipeline.md ("Bad input"), behaviour by behaviour, and the tests here that check each.
CATALOGUE = {
    "malformed CSV": ["test_01_malformed_csv", "test_04_empty_csv_file", "test_05_header_only_csv"],
    "wrong delimiter": ["test_02_wrong_delimiter"],
    "non-UTF-8 text": ["test_03_non_utf8_csv"],
    "missing or unexpected columns": ["test_06_missing_required_column", "test_07_unexpected_columns_are_reported",
                                      "test_08_unknown_csv_format"],
    "text in numeric columns": ["test_09_text_in_a_numeric_column"],
    "unknown category spellings": ["test_10_unknown_category_spelling", "test_15_unmapped_diagnosis"],
    "text/NaN/out-of-range targets": ["test_11_text_or_out_of_range_target", "test_12_empty_target"],
    "duplicated ids": ["test_13_duplicated_ids"],
    "one class": ["test_14_single_class", "test_16_one_hot_ground_truth_with_two_classes"],
    "fewer patients than folds": ["test_17_fewer_patients_than_folds", "test_33_one_fold"],
    "HDF5 keys without rows and rows without keys": ["test_18_hdf5_key_without_a_row_is_counted_and_reported",
                                                     "test_19_row_without_an_hdf5_key"],
    "truncated or non-image files": ["test_20_truncated_jpeg", "test_21_not_an_image",
                                     "test_25_hdf5_value_that_is_not_image_bytes"],
    "missing image folders": ["test_22_empty_image_folder", "test_23_missing_image_folder",
                              "test_24_no_hdf5_and_no_image_folder"],
    "alpha/grayscale/16-bit/1 px images": ["test_26_unusual_but_valid_images_become_rgb_uint8"],
    "10,000 px JPEGs": ["test_27_ten_thousand_pixel_jpeg_decodes_in_bounded_memory"],
    "paths escaping the data folder": ["test_28_image_path_escaping_the_data_folder"],
    "params typos and bad values": ["test_29_params_typo", "test_30_negative_learning_rate",
                                    "test_34_warmup_not_below_epochs", "test_35_params_file_not_a_mapping",
                                    "test_36_minority_set_requested_but_empty"],
    "unknown backbones": ["test_31_unknown_backbone"],
    "missing pretrained weights": ["test_32_missing_pretrained_weight_file"],
}


def test_every_catalogued_behaviour_is_documented_and_tested_here():
    """Behaviours, not test functions: each one docs/pipeline.md lists has its tests in this file, and
    every numbered case here belongs to a listed behaviour."""
    page = " ".join((Path(__file__).resolve().parents[1] / "docs" / "pipeline.md").read_text().split())
    for behaviour, tests in CATALOGUE.items():
        assert behaviour in page, f"docs/pipeline.md's bad-input catalogue no longer lists {behaviour!r}"
        for name in tests:
            assert callable(globals().get(name)), f"{behaviour!r}: no test {name} in this file"
    numbered = {name for name in globals() if name.startswith("test_") and name[5:7].isdigit()}
    assert numbered == {name for tests in CATALOGUE.values() for name in tests}
