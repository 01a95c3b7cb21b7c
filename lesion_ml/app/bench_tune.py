"""`lesion bench tune`: a tuning study (nested, patient-grouped CV) at ISIC 2024 scale, timed."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from lesion_ml.app.bench import peak_rss_mib
from lesion_ml.config import Params
from lesion_ml.config.tune import TuneBase
from lesion_ml.tune.data import TuneData
from lesion_ml.tune.fit import GbdtFitter
from lesion_ml.tune.report import tuned_vs_default
from lesion_ml.tune.study import finished, load_study, open_storage, run_trials, study_base, study_names


def bench_tune(params: Params, study_name: str, *, n_trials: int | None = None, n_rows: int = 401_059,
               n_patients: int = 1_042, malignant: int = 393, seed: int = 0) -> dict[str, Any]:
    """Run study `study_name` of `params.tune.studies` (`n_trials` per study if given) on generated
    metadata of `n_rows` rows, as the tune stage runs it but in this process and one trial at a time:
    every outer fold's study and the exported one, then default vs tuned out of fold.

    Returns the sizes, seconds per study and in all, finished trials per study, peak RSS and the
    comparison (lesion_ml.tune.report.compare, 200 resamples).
    """
    from lesion_ml.data.split import assign_folds
    from lesion_ml.data.synthetic_tabular import generate_metadata
    from lesion_ml.tabular.prepare import clean_metadata

    study = params.tune.studies[study_name]
    if study.model != "gbdt":
        raise ValueError(f"study {study_name!r} tunes {study.model!r}; the tune bench runs metadata-model (gbdt) "
                         "studies on generated metadata, which has no images (--study)")
    if n_trials:
        study = study.model_copy(update={"n_trials": n_trials})
    start = time.perf_counter()
    table = generate_metadata(n_rows, n_patients, malignant / n_rows, seed).rename(columns={"isic_id": "image_id"})
    folds = assign_folds(table, params.split)
    data = TuneData(table["image_id"].to_numpy(), clean_metadata(table, params.prepare.features),
                    table["target"].to_numpy().astype(int), folds["patient_id"].astype(str).to_numpy(),
                    folds["fold"].to_numpy())
    base = TuneBase.of(params.prepare, params.train_gbdt, params.train_cnn)
    seconds: dict[str, float] = {"generate_clean_split": round(time.perf_counter() - start, 1)}
    trials: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="lesion-bench-tune-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'optuna.db'}"
        names = study_names(study_base(study_name, study, base, data.digest()), params.split.n_folds)
        for outer, name in names.items():
            label = "all folds" if outer is None else f"fold {outer}"
            t = time.perf_counter()
            run_trials(url, name, study, base=base, fitter=GbdtFitter(data), outer=outer, n_trials=study.n_trials)
            seconds[f"study {label}"] = round(time.perf_counter() - t, 1)
            trials[label] = finished(load_study(open_storage(url), name, study))
        t = time.perf_counter()
        storage = open_storage(url)
        studies = {k: load_study(storage, n, study) for k, n in names.items()}
        result = tuned_vs_default(studies, GbdtFitter(data, cache_size=params.split.n_folds), base, 200)[0]
        seconds["outer refit + compare"] = round(time.perf_counter() - t, 1)
    seconds["total"] = round(time.perf_counter() - start, 1)
    return {"rows": n_rows, "patients": int(len(set(data.groups))), "malignant": int(data.y.sum()),
            "study": study_name, "n_trials": study.n_trials, "inner_folds": study.inner_folds,
            "outer_folds": params.split.n_folds, "finished_trials": trials, "seconds": seconds,
            "peak_rss_mib": round(peak_rss_mib(), 1), **result}


def format_tune_table(r: dict[str, Any]) -> str:
    lines = [f"tune bench: study {r['study']}, {r['rows']:,} rows, {r['patients']:,} patients, {r['malignant']} "
             f"malignant; {r['n_trials']} trials per study, {r['outer_folds']} outer x {r['inner_folds']} inner folds"]
    lines += [f"  {k:<24}{v:>9.1f} s" for k, v in r["seconds"].items()]
    lines.append(f"  {'peak RSS':<24}{r['peak_rss_mib'] / 1024:>9.2f} GiB")
    for label in ("default", "tuned"):
        m = r[label]
        lines.append(f"  {label:<24}ROC-AUC {m['roc_auc']:.4f}  pAUC80 {m['pauc_80']:.4f}  PR-AUC {m['pr_auc']:.4f}")
    d = r["difference"].get("pauc_80")
    if d:
        lo, hi = d["ci95"]
        lines.append(f"  {'tuned - default pAUC80':<24}{d['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    return "\n".join(lines)
