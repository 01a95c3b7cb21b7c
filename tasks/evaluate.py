"""Task of the evaluate stage."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lesion_ml.catalogue import ModelRef
from lesion_ml.config import EvaluateConfig, TrainGbdtConfig
from lesion_ml.data.fold_outputs import mean_importance
from lesion_ml.evaluate.compare import compare_models, curve_tables, merge_oof, metrics_markdown
from lesion_ml.io import write_csv, write_json, write_parquet, write_text
from tasks.cache import cached_task


@cached_task(outputs=('out_metrics', 'out_detail', 'out_html', 'out_scores', 'out_curves'))
def evaluate_models(*, oof_files: dict[str, Path], models: list[ModelRef], cfg: EvaluateConfig,
                    gbdt_cfg: TrainGbdtConfig, lesions: Path, features: list[Path], importance: list[Path],
                    out_metrics: Path, out_detail: Path, out_html: Path, out_scores: Path | None = None,
                    out_curves: dict[str, Path] | None = None) -> dict:
    """Every model, plus ensembles and a stack, scored the same way on the same out-of-fold rows
    (`compare_models`, written here; `oof_files` maps each of `models` by name to its out-of-fold scores;
    `features` and `importance` list the folds' metadata features and the metadata model's feature
    importances, fold k at k). Returns ROC-AUC / pAUC per model."""
    oof = merge_oof({n: pd.read_parquet(f) for n, f in oof_files.items()}, oof_files)

    def features_of(k: int) -> pd.DataFrame:
        return pd.read_parquet(features[k]).set_index("image_id").loc[oof["image_id"]]

    per_fold = [json.loads(f.read_text()) for f in importance]
    result = compare_models(oof, models, pd.read_parquet(lesions), features_of=features_of,
                            importance=mean_importance(per_fold), cfg=cfg, gbdt_cfg=gbdt_cfg)
    write_json(result.metrics, out_metrics)
    if out_scores is not None:
        write_parquet(result.scores, out_scores)
    if out_curves is not None:  # DVC plots: out_curves["roc"] and ["pr"] hold <model>.csv
        y = oof["target"].to_numpy().astype(int)
        for name, (roc, pr) in curve_tables(y, result.scores[[r.name for r in result.models]]).items():
            write_csv(roc, out_curves["roc"] / f"{name}.csv")
            write_csv(pr, out_curves["pr"] / f"{name}.csv")
    write_json(result.detail, out_detail)
    write_text(result.report, out_html)
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
