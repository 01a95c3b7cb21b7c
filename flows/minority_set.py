"""Stage `minority_set`: augmented copies of every malignant image, cached by DVC."""
from __future__ import annotations

from prefect import flow

from lesion_ml import artefacts as cat
from lesion_ml.config import load_params
from tasks.minority_set import build_minority_set


@flow(name="minority_set")
def minority_set_flow(params: str = str(cat.PARAMS)) -> int:
    """Write train_cnn.minority_set.copies augmented copies of each malignant image."""
    p = load_params(params)
    return build_minority_set(images=cat.IMAGES, lesions=cat.LESIONS, cfg=p.train_cnn.minority_set,
                              out_images=cat.MINORITY_IMAGES, out_index=cat.MINORITY_INDEX)


if __name__ == "__main__":
    minority_set_flow()
