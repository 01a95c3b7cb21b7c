"""Shared fixtures. PREFECT_HOME points at a temporary folder before anything imports prefect."""
from __future__ import annotations

import os
import tempfile

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lesion-ml-prefect-")
for _key, _value in {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     "DVC_NO_ANALYTICS": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
                     "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"}.items():
    os.environ[_key] = _value

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from lesion_ml.config import SyntheticConfig  # noqa: E402
from lesion_ml.data.synthetic import generate_synthetic  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY = SyntheticConfig(n_patients=12, lesions_per_patient=(3, 5), malignant_fraction=0.25,
                       tile_px=(40, 56), seed=7)


def shared_dataset(name: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real sample data {path} is absent (it lives in ../shared/data beside the repository)")
    return path


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A tiny generated ISIC 2024-format data set (about 48 lesions, 12 patients)."""
    out = tmp_path_factory.mktemp("demo")
    generate_synthetic(out, TINY)
    return out


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API server for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness) -> str:
    """The session server's API URL, for subprocesses (stage flows under `dvc repro`): given as
    PREFECT_API_URL they report there instead of each starting a temporary server (5-10 s per
    stage). The temporary-server path stays covered by tests/test_faults.py, whose stage
    subprocesses are given no URL."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def write_competition_files(sample: Path, dest: Path) -> int:
    """The real ISIC 2024 sample as the competition ships it: train-image.hdf5 with one scalar
    fixed-length bytes dataset (dtype |S<n>) per isic_id, and train-metadata.csv."""
    import shutil

    import h5py
    import numpy as np

    dest.mkdir(parents=True, exist_ok=True)
    files = sorted((sample / "images").glob("*.jpg"))
    with h5py.File(dest / "train-image.hdf5", "w") as h5:
        for f in files:
            data = f.read_bytes()
            h5.create_dataset(f.stem, data=np.array(data, dtype=f"S{len(data)}"))
    shutil.copy(sample / "sample_metadata.csv", dest / "train-metadata.csv")
    return len(files)
