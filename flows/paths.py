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


def importance_path(fold: int) -> Path:
    return GBDT_DIR / f"importance_fold{fold}.json"


# What each persisted (DVC `persist: true`) output folder holds for the current params: the stage
# removes every other file there (`tasks.outputs.keep_only`) before anything reads the folder.
def feature_files(n_folds: int) -> set[str]:
    return {"clean.parquet"} | {features_path(k).name for k in range(n_folds)}


def gbdt_files(n_folds: int, seeds: list[int]) -> set[str]:
    return {"oof.parquet"} | {f"pred_fold{k}.parquet" for k in range(n_folds)} | \
        {importance_path(k).name for k in range(n_folds)} | {f"fold{k}_seed{s}.txt" for k in range(n_folds) for s in seeds}


def cnn_files(n_folds: int) -> set[str]:
    return {"config.yaml", "oof.parquet"} | {f"{p}fold{k}{ext}" for k in range(n_folds)
                                             for p, ext in (("", ".safetensors"), ("history_", ".json"),
                                                            ("pred_", ".parquet"))}


def plot_files(n_folds: int) -> set[str]:
    return {f"fold{k}.csv" for k in range(n_folds)}
