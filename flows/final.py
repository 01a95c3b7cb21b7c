"""Stage `final`: the chosen model retrained on all labelled rows, exported to models/final."""
from __future__ import annotations

from prefect import flow

from flows import paths
from lesion_ml.config import load_params
from tasks.final import export_final


@flow(name="final")
def final_flow(params: str = str(paths.PARAMS)) -> dict:
    """Export params.yaml final.model (default: evaluate's best) with its threshold and model card."""
    p = load_params(params)
    return export_final(p, paths.REPORTS / "metrics.json", paths.REPORTS / "evaluation.json", paths.OOF_SCORES,
                        paths.LESIONS, paths.FEATURES / "clean.parquet", paths.IMAGES, paths.MINORITY, paths.FINAL,
                        paths.CHECKPOINTS / "final")


if __name__ == "__main__":
    final_flow()
