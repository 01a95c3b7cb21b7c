"""Stage `minority_set`: augmented copies of every malignant image, cached by DVC."""
from __future__ import annotations

from prefect import flow

from flows import paths
from lesion_ml.config import load_params
from tasks.minority_set import build_minority_set


@flow(name="minority_set")
def minority_set_flow(params: str = str(paths.PARAMS)) -> int:
    """Write train_cnn.minority_set.copies augmented copies of each malignant image."""
    p = load_params(params)
    return build_minority_set(paths.IMAGES, paths.LESIONS, p.train_cnn.minority_set, paths.MINORITY)


if __name__ == "__main__":
    minority_set_flow()
