"""Where each stage reads and writes, relative to the repository root (the DVC stage graph)."""
from __future__ import annotations

from pathlib import Path

from tasks.cache import STATE  # noqa: F401 - the task cache's folder; checkpoints live beside it

PARAMS = Path("params.yaml")
INTERIM = Path("data/interim")
DEMO_DIR = INTERIM / "demo"
LESIONS = INTERIM / "lesions.parquet"
IMAGES = INTERIM / "images.json"
FOLDS = Path("data/processed/folds.parquet")
FEATURES = Path("data/processed/features")
MODELS = Path("models")
GBDT_DIR = MODELS / "gbdt"
CNN_DIR = MODELS / "cnn"
REPORTS = Path("reports")
MINORITY = Path("data/processed/minority")  # augmented copies of the malignant images
TRAIN_PLOTS = REPORTS / "train_cnn"  # per-epoch metrics, one folder per image model (DVC plots)
CHECKPOINTS = STATE / "checkpoints"
OOF_SCORES = MODELS / "oof_scores.parquet"  # every evaluated model's out-of-fold scores
CURVES = REPORTS / "curves"  # ROC and PR points per model (DVC plots)
FINAL = MODELS / "final"  # the exported model bundle (`lesion predict --model models/final`)
TUNE = REPORTS / "tune"  # tuning studies: <name>/ (report, trials, best.yaml) and <name>.json (metrics)
EXTERNAL = REPORTS / "external"  # external validation: <name>/ (report, scores) and <name>.json (metrics)


def features_path(fold: int) -> Path:
    return FEATURES / f"fold{fold}.parquet"
