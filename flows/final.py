"""Stage `final`: the chosen model retrained on all labelled rows (or, with `final.image_models:
fold_average`, its image models as the mean of their fold models), exported to models/final."""
from __future__ import annotations

from prefect import flow

from lesion_ml import artefacts as cat
from lesion_ml.config import load_params
from lesion_ml.model.build import FinalSections
from tasks.final import export_final


@flow(name="final")
def final_flow(params: str = str(cat.PARAMS)) -> dict:
    """Export params.yaml final.model (default: evaluate's best) with its threshold and model card."""
    p = load_params(params)
    cfg = FinalSections(final=p.final, prepare=p.prepare, train_gbdt=p.train_gbdt, train_cnn=p.train_cnn,
                        evaluate=p.evaluate)
    fold_weights = ({k: [cat.cnn_weights(k, f) for f in range(p.split.n_folds)] for k in p.train_cnn.models}
                    if p.final.image_models == "fold_average" else {})
    return export_final(cfg=cfg, metrics=cat.METRICS, detail=cat.EVALUATION, scores=cat.OOF_SCORES,
                        lesions=cat.LESIONS, clean=cat.CLEAN, images=cat.IMAGES, minority_index=cat.MINORITY_INDEX,
                        minority_images=cat.MINORITY_IMAGES, out=cat.FINAL,
                        checkpoints={k: cat.final_checkpoint(k) for k in p.train_cnn.models},
                        fold_weights=fold_weights)


if __name__ == "__main__":
    final_flow()
