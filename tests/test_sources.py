from __future__ import annotations

import logging
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import shared_dataset, write_competition_files
from lesion_ml.config import DataConfig, FolderConfig
from lesion_ml.data.images import BadImageError
from lesion_ml.data.sources import DataError, ingest, read_isic2024


def _folder(tmp_path, rows: list[dict], images: dict[str, bytes] | None = None, csv: str = "labels.csv"):
    """A folder source: images/<id>.png (a real image unless given) + labels.csv."""
    (tmp_path / "images").mkdir(exist_ok=True)
    ok, png = cv2.imencode(".png", np.full((20, 20, 3), 120, np.uint8))
    for r in rows:
        iid = r.get("image_id") or r.get("image_name") or r.get("image")
        if iid is not None:
            data = (images or {}).get(iid, png.tobytes())
            (tmp_path / "images" / f"{iid}.png").write_bytes(data)
    pd.DataFrame(rows).to_csv(tmp_path / csv, index=False)
    return DataConfig(source="folder", path=str(tmp_path), folder=FolderConfig(csv=csv))


def _rows(n=4, **extra):
    return [{"image_id": f"IMG_{i}", "target": i % 2, "patient_id": f"P{i // 2}", **extra} for i in range(n)]


def test_isic2024_reader_on_real_sample():
    root = shared_dataset("isic2024-sample")
    ing = ingest(DataConfig(source="isic2024", path=str(root), metadata_csv="sample_metadata.csv"))
    assert len(ing.table) == 50 and ing.table["target"].sum() == 20
    assert list(ing.table.columns[:4]) == ["image_id", "patient_id", "target", "source"]
    assert ing.table["source"].unique().tolist() == ["isic2024"]
    img = ing.store.get(ing.table["image_id"][0])
    assert img.dtype == np.uint8 and img.shape[2] == 3 and 89 <= img.shape[0] <= 171


def test_isic2024_reader_on_the_competition_hdf5_built_from_the_real_sample(tmp_path):
    """The HDF5 branch (one scalar |S<n> dataset per isic_id, as the competition ships it) reads
    the same table and the same pixels as the JPEG folder of the same images."""
    root = shared_dataset("isic2024-sample")
    n = write_competition_files(root, tmp_path)
    h5 = ingest(DataConfig(source="isic2024", path=str(tmp_path)))
    jpg = ingest(DataConfig(source="isic2024", path=str(root), metadata_csv="sample_metadata.csv"))
    assert n == 50 and len(h5.table) == 50
    pd.testing.assert_frame_equal(h5.table.reset_index(drop=True), jpg.table.reset_index(drop=True))
    for image_id in h5.table["image_id"]:
        np.testing.assert_array_equal(h5.store.get(image_id), jpg.store.get(image_id))
        assert h5.store.get(image_id, 32).shape[0] >= 32  # the reduced-scale decode keeps the requested side
    h5.store.close()


def test_folder_reader_on_ham10000_sample_groups_by_lesion():
    root = shared_dataset("ham10000-400")
    ing = ingest(DataConfig(source="folder", path=str(root)))
    assert len(ing.table) == 400 and ing.table["target"].sum() == 200
    assert (ing.table["patient_id"] == ing.table["lesion_id"]).all()
    assert "anatom_site_general" in ing.table and "age_approx" in ing.table
    assert ing.store.get(ing.table["image_id"][5]).shape == (224, 224, 3)


def test_ham10000_metadata_maps_dx_and_skips_rows_without_images():
    root = shared_dataset("ham10000-400")
    cfg = DataConfig(source="folder", path=str(root), folder=FolderConfig(csv="HAM10000_metadata.csv"))
    with pytest.raises(BadImageError, match=r"9615 of 10015 rows have a missing or bad image; first: 'ISIC_\d+'"):
        ingest(cfg)
    ing = ingest(cfg.model_copy(update={"on_bad_image": "skip"}))
    assert len(ing.table) == 400 and len(ing.report["skipped"]) == 9615
    dx = ing.table["dx"]
    assert (ing.table["target"] == dx.isin(["mel", "bcc", "akiec"]).astype(int)).all()


def test_generated_demo_ingests(tiny_demo):
    ing = ingest(DataConfig(source="synthetic"), tiny_demo)
    assert ing.report["n_images"] == len(ing.table) > 0
    assert ing.report["images_without_row"] == 0 and ing.report["skipped"] == []


def test_missing_required_column(tmp_path):
    cfg = _folder(tmp_path, [{"image_id": "a", "label": 1}])
    with pytest.raises(DataError, match="cannot tell the CSV format"):
        ingest(cfg)
    (tmp_path / "m.csv").write_text("isic_id,patient_id\nISIC_1,P1\n")
    with pytest.raises(DataError, match=r"m.csv: missing required column\(s\) \['target'\]"):
        read_isic2024(tmp_path, "m.csv")


def test_duplicated_ids_name_rows(tmp_path):
    rows = _rows(4)
    rows[3]["image_id"] = "IMG_1"
    with pytest.raises(DataError, match=r"duplicated image id 'IMG_1' at rows \[3, 5\]"):
        ingest(_folder(tmp_path, rows))


def test_id_without_image_errors_or_is_skipped(tmp_path):
    cfg = _folder(tmp_path, _rows(6))
    (tmp_path / "images" / "IMG_4.png").unlink()
    with pytest.raises(BadImageError, match="1 of 6 rows .* first: 'IMG_4': no image with this id"):
        ingest(cfg)
    ing = ingest(cfg.model_copy(update={"on_bad_image": "skip"}))
    assert "IMG_4" not in set(ing.table["image_id"]) and len(ing.table) == 5
    assert ing.report["skipped"][0]["image_id"] == "IMG_4"


def test_images_without_row_are_counted(tmp_path, caplog):
    cfg = _folder(tmp_path, _rows(4))
    shutil.copy(tmp_path / "images/IMG_0.png", tmp_path / "images/EXTRA_1.png")
    shutil.copy(tmp_path / "images/IMG_0.png", tmp_path / "images/EXTRA_2.png")
    with caplog.at_level(logging.WARNING):
        ing = ingest(cfg)
    assert ing.report["images_without_row"] == 2
    assert "2 images have no metadata row" in caplog.text


@pytest.mark.parametrize("bad", ["2", "-1", "malignant", "1.0"])
def test_labels_outside_0_1(tmp_path, bad):
    rows = _rows(4)
    rows[2]["target"] = bad
    with pytest.raises(DataError, match=rf"labels.csv: row 4: target '{bad}' is not allowed; target must be 0"):
        ingest(_folder(tmp_path, rows))


def test_unmapped_diagnosis(tmp_path):
    rows = [{"image_id": f"I{i}", "dx": dx, "lesion_id": f"L{i}"} for i, dx in enumerate(["nv", "mel", "melanoma?"])]
    with pytest.raises(DataError, match=r"row 4: dx 'melanoma\?' is not one of \['ak', 'akiec'"):
        ingest(_folder(tmp_path, rows, csv="HAM.csv"))


def test_empty_data_set(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels.csv").write_text("image_id,target\n")
    with pytest.raises(DataError, match="no rows; the data set is empty"):
        ingest(DataConfig(source="folder", path=str(tmp_path)))


def test_single_class(tmp_path):
    with pytest.raises(DataError, match=r"only target=0 present \(3 rows\)"):
        ingest(_folder(tmp_path, [{"image_id": f"I{i}", "target": 0} for i in range(3)]))


def test_corrupt_image_errors_or_is_skipped(tmp_path):
    ok, jpg = cv2.imencode(".jpg", np.full((30, 30, 3), 90, np.uint8))
    truncated = jpg.tobytes()[: len(jpg) // 2]
    cfg = _folder(tmp_path, _rows(4), images={"IMG_1": truncated})
    with pytest.raises(BadImageError, match=r"IMG_1.png: truncated JPEG \(no end-of-image marker"):
        ingest(cfg)
    ing = ingest(cfg.model_copy(update={"on_bad_image": "skip"}))
    assert ing.table["image_id"].tolist() == ["IMG_0", "IMG_2", "IMG_3"]


def test_garbage_bytes_fail_full_decode(tmp_path):
    cfg = _folder(tmp_path, _rows(4), images={"IMG_2": b"not an image at all"})
    with pytest.raises(BadImageError, match="IMG_2.png: cannot decode image"):
        ingest(cfg.model_copy(update={"verify_images": "decode"}))


def test_missing_patient_id_warns_and_uses_one_patient_per_image(tmp_path, caplog):
    rows = [{"image_id": f"I{i}", "target": i % 2} for i in range(4)]
    with caplog.at_level(logging.WARNING):
        ing = ingest(_folder(tmp_path, rows))
    assert (ing.table["patient_id"] == ing.table["image_id"]).all()
    assert "no patient_id; treating each image as its own patient" in caplog.text


def test_image_paths_cannot_leave_the_data_folder(tmp_path):
    (tmp_path / "d").mkdir()
    pd.DataFrame({"image_file": ["../../etc/passwd", "x.png"], "target": [0, 1]}).to_csv(tmp_path / "d/labels.csv")
    with pytest.raises(DataError, match=r"row 2: image_file '../../etc/passwd' points outside the data folder"):
        ingest(DataConfig(source="folder", path=str(tmp_path / "d")))


def test_format_detection_lets_an_explicit_target_win_and_names_the_params_key():
    from lesion_ml.data.sources import detect_format

    assert detect_format(pd.Index(["image_id", "target", "dx"])) == "generic"
    assert detect_format(pd.Index(["image_id", "lesion_id", "dx", "age"])) == "ham10000"
    assert detect_format(pd.Index(["image_name", "target", "diagnosis"])) == "isic2020"
    assert detect_format(pd.Index(["image", "MEL", "NV", "BCC"])) == "isic2019"
    with pytest.raises(DataError, match="name the format with params.yaml data.folder.format$"):
        detect_format(pd.Index(["image_id", "label"]))
