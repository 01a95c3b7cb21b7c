"""The artefact catalogue: every file and folder of the stage graph, named once, relative to the
repository root.

The stages (flows/), their tasks (tasks/) and the application layer (lesion_ml/app: the CLI, the
benchmarks, the Prefect server) take their paths from here; dvc.yaml's deps and outs name the same
files (tests/test_layout.py checks that each dvc.yaml out is one of these). The library below them
(lesion_ml/data, tabular, image, evaluate, model, tune) takes frames, arrays, image stores and its
own config section, and never builds one of these paths. A folder that a library function writes
itself because its content is too large to return (an HDF5 file of images, the model bundle) is
passed to it as one explicit path.

Per-fold files are named `fold<k>` (k = 0 .. split.n_folds - 1); an image model's files live under
its train_cnn.models key. `.lesion/` is the project's local state (task cache, checkpoints, the
tuning database, the Prefect server): outside every DVC out, since DVC deletes a stage's outs
before it runs, and git-ignored.
"""
from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")

# Local state, outside every DVC out.
STATE = Path(".lesion")
TASK_CACHE = STATE / "prefect"  # Prefect task results and the fingerprint memo (tasks/cache.py)
SERVER = STATE / "server"  # `lesion server start`: the Prefect server's and the deployment's logs and pids
CHECKPOINTS = STATE / "checkpoints"  # <model>/fold<k>.pt while training; final/<model>.pt for the final stage
TUNE_STORAGE = f"sqlite:///{STATE.as_posix()}/optuna.db"  # the default Optuna storage (tune.storage: null)

# ingest
RAW = Path("data/raw")
ISIC2024_RAW = RAW / "isic2024"  # params.yaml data.path's default
INTERIM = Path("data/interim")
DEMO_DIR = INTERIM / "demo"  # the generated demo set (data.source: synthetic)
LESIONS = INTERIM / "lesions.parquet"  # one row per image: the canonical metadata and the label
IMAGES = INTERIM / "images.json"  # the image store's manifest
INGEST_REPORT = Path("reports/ingest.json")  # rows read, dropped and skipped

# split, prepare
PROCESSED = Path("data/processed")
FOLDS = PROCESSED / "folds.parquet"
FEATURES = PROCESSED / "features"
CLEAN = FEATURES / "clean.parquet"  # cleaned metadata with the engineered features, before any fitting

# minority_set: augmented copies of the malignant images
MINORITY = PROCESSED / "minority"
MINORITY_IMAGES = MINORITY / "images.hdf5"
MINORITY_INDEX = MINORITY / "index.parquet"  # copy_id, source_id

# train_gbdt, train_cnn@<model>, evaluate, final
MODELS = Path("models")
GBDT_DIR = MODELS / "gbdt"
GBDT_OOF = GBDT_DIR / "oof.parquet"
CNN_DIR = MODELS / "cnn"
OOF_SCORES = MODELS / "oof_scores.parquet"  # every evaluated model's out-of-fold scores
FINAL = MODELS / "final"  # the exported model bundle (`lesion predict --model models/final`)
FINAL_CHECKPOINTS = CHECKPOINTS / "final"

# reports
REPORTS = Path("reports")
SELECTION = REPORTS / "selection.json"
METRICS = REPORTS / "metrics.json"
EVALUATION = REPORTS / "evaluation.json"
REPORT_HTML = REPORTS / "report.html"
CURVES = REPORTS / "curves"  # ROC and PR points per model (DVC plots)
CURVE_KINDS = ("roc", "pr")
TRAIN_PLOTS = REPORTS / "train_cnn"  # per-epoch metrics, one folder per image model (DVC plots)
TUNE = REPORTS / "tune"  # tune@<study>
EXTERNAL = REPORTS / "external"  # validate@<set>
SCALE = REPORTS / "scale.json"  # `lesion bench scale`
LEARNING_CURVE = REPORTS / "learning_curve.json"  # `lesion bench curve`
LEARNING_CURVE_PLOT = Path("docs") / "figures" / "learning_curve.png"  # its plot, shown by docs/validation.md
LEAVE_ONE_SITE_OUT = REPORTS / "leave_one_site_out.json"  # `lesion bench sites`
RECIPE_400 = REPORTS / "recipe_ham10000-400.json"  # `lesion bench curve` of examples/ham10000-400.yaml, all 400 images


def curves(kind: str) -> Path:
    """The folder of one kind of curve (CURVE_KINDS): <model>.csv for each evaluated model."""
    return CURVES / kind


def features(fold: int) -> Path:
    """The fold's selected, fitted metadata features (prepare)."""
    return FEATURES / f"fold{fold}.parquet"


def gbdt_booster(fold: int, seed: int) -> Path:
    """The metadata model of fold `fold` and seed `seed` (LightGBM text)."""
    return GBDT_DIR / f"fold{fold}_seed{seed}.txt"


def gbdt_pred(fold: int) -> Path:
    """The metadata model's predictions for fold `fold`'s validation rows."""
    return GBDT_DIR / f"pred_fold{fold}.parquet"


def importance(fold: int) -> Path:
    """The metadata model's feature importances in fold `fold`."""
    return GBDT_DIR / f"importance_fold{fold}.json"


def cnn_dir(model: str) -> Path:
    return CNN_DIR / model


def cnn_config(model: str) -> Path:
    """The image model's train_cnn.models entry as it was trained."""
    return cnn_dir(model) / "config.yaml"


def cnn_oof(model: str) -> Path:
    return cnn_dir(model) / "oof.parquet"


def cnn_weights(model: str, fold: int) -> Path:
    return cnn_dir(model) / f"fold{fold}.safetensors"


def cnn_history(model: str, fold: int) -> Path:
    return cnn_dir(model) / f"history_fold{fold}.json"


def cnn_pred(model: str, fold: int) -> Path:
    return cnn_dir(model) / f"pred_fold{fold}.parquet"


def train_plots(model: str) -> Path:
    """The image model's per-epoch metrics, one file per fold (DVC plots)."""
    return TRAIN_PLOTS / model


def train_plot(model: str, fold: int) -> Path:
    return train_plots(model) / f"fold{fold}.csv"


def checkpoint(model: str, fold: int) -> Path:
    """The image model's training state in fold `fold`, for resuming after a kill."""
    return CHECKPOINTS / model / f"fold{fold}.pt"


def final_checkpoint(model: str) -> Path:
    """The final stage's retraining state of the image model `model`."""
    return FINAL_CHECKPOINTS / f"{model}.pt"


# tune@<study>: reports/tune/<study>/ and the DVC metrics file reports/tune/<study>.json
def tune_dir(study: str) -> Path:
    return TUNE / study


def tune_metrics(study: str) -> Path:
    return TUNE / f"{study}.json"


TUNE_FILES = {"report": "report.html", "trials": "trials.csv", "oof": "oof.parquet", "best": "best.yaml",
              "summary": "summary.json"}


# validate@<set>: reports/external/<set>/ and the DVC metrics file reports/external/<set>.json
def external_dir(name: str) -> Path:
    return EXTERNAL / name


def external_metrics(name: str) -> Path:
    return EXTERNAL / f"{name}.json"


VALIDATION_FILES = {"report": "report.html", "predictions": "predictions.csv", "validation": "validation.json"}


# What each persisted (DVC `persist: true`) output folder holds for the current params: the stage
# removes every other file there (tasks.outputs.keep_only) before anything reads the folder.
def feature_files(n_folds: int) -> set[str]:
    return {CLEAN.name} | {features(k).name for k in range(n_folds)}


def gbdt_files(n_folds: int, seeds: list[int]) -> set[str]:
    return {GBDT_OOF.name} | {p.name for k in range(n_folds)
                              for p in (gbdt_pred(k), importance(k), *(gbdt_booster(k, s) for s in seeds))}


def cnn_files(model: str, n_folds: int) -> set[str]:
    return {cnn_config(model).name, cnn_oof(model).name} | {
        p.name for k in range(n_folds) for p in (cnn_weights(model, k), cnn_history(model, k), cnn_pred(model, k))}


def plot_files(model: str, n_folds: int) -> set[str]:
    return {train_plot(model, k).name for k in range(n_folds)}
