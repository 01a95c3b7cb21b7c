"""Task of the evaluate stage."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lesion_ml.catalogue import ModelRef
from lesion_ml.config import EvaluateConfig, TrainGbdtConfig
from lesion_ml.data.fold_outputs import mean_importance
from lesion_ml.evaluate.compare import compare_models, merge_oof, metrics_markdown, write_comparison
from tasks.cache import cached_task


@cached_task(outputs=('out_metrics', 'out_detail', 'out_html', 'out_scores', 'out_curves'))
def evaluate_models(oof_files: dict[str, Path], models: list[ModelRef], cfg: EvaluateConfig, lesions: Path,
                    features_dir: Path, gbdt_cfg: TrainGbdtConfig, importance: list[Path], out_metrics: Path,
                    out_detail: Path, out_html: Path, out_scores: Path | None = None,
                    out_curves: Path | None = None) -> dict:
    """Every model, plus ensembles and a stack, scored the same way on the same out-of-fold rows
    (`compare_models`; `oof_files` maps each of `models` by name to its out-of-fold scores; `importance`
    lists the metadata model's per-fold feature importances), written by `write_comparison`. Returns ROC-AUC / pAUC per model."""
    oof = merge_oof({n: pd.read_parquet(f) for n, f in oof_files.items()}, oof_files)

    def features_of(k: int) -> pd.DataFrame:
        return pd.read_parquet(features_dir / f"fold{k}.parquet").set_index("image_id").loc[oof["image_id"]]

    result = compare_models(oof, models, pd.read_parquet(lesions), features_of, mean_importance(importance), cfg,
                            gbdt_cfg)
    write_comparison(result, oof["target"].to_numpy().astype(int), out_metrics, out_detail, out_html, out_scores,
                     out_curves)
    _publish(result.metrics, out_html)
    return {name: {"roc_auc": m["roc_auc"], "pauc_80": m["pauc_80"]} for name, m in result.metrics["models"].items()}


def _publish(metrics: dict, report: Path) -> None:
    """The comparison as a markdown artefact of the flow run (shown in the Prefect UI)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import get_run_context

    try:
        get_run_context()
    except Exception:  # noqa: BLE001 - called outside a run (tests of the function body): nothing to attach to
        return
    create_markdown_artifact(key="model-comparison", markdown=f"{metrics_markdown(metrics)}\n\nReport: `{report}`",
                             description="out-of-fold comparison of every model")
