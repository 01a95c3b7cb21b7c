"""`lesion bench scale`: the whole DVC pipeline on an ISIC 2024-size data set, stage by stage.

A work folder gets the repository's pipeline (its tracked files, tests aside), the data set linked
in as ``data/raw/isic2024`` and params.yaml with the overrides of a scale profile
(params.scale.yaml). Every stage runs on its own (``dvc repro --single-item``) so that each one's
wall time and peak memory are its own; then ``lesion predict`` scores every image with the final
model. Memory is reported twice, both sampled four times a second over the stage's process tree:
the largest peak of any one process (its VmHWM, the kernel's high-water mark) and the peak of the
whole tree's resident memory summed (loader or Dask workers included; pages shared after a fork
counted in each process). Image-model inference is compared with the bare forward pass of the same
network, timed in this process on random images of the same size and batch size.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lesion_ml import artefacts as cat
from lesion_ml.app.children import own_group
from lesion_ml.config import merge_params

GIB = 2**30
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_memory(root: int) -> tuple[int, int]:
    """Resident bytes of process `root` and all its descendants summed, and the largest peak
    (VmHWM) of any one of them so far; (0, 0) once they are gone."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, largest, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        largest = max(largest, int(line.split()[1]) * 1024)
                        break
        except (OSError, IndexError, ValueError):
            pass
    return total, largest


def _children_cpu() -> float:
    """User + system CPU seconds of this process's waited-for children (and theirs), so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None,
                 interval: float = 0.25) -> dict[str, Any]:
    """Run `cmd` (its process group stopped if this process is interrupted: lesion_ml/app/children.py),
    its output to `log`; its wall time, exit status, peak memory (see the module) and CPU time
    (`cpu_seconds`: user + system of the command and every process it waited for, such as its loader
    workers)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out, own_group(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT) as proc:
        cpu_before = _children_cpu()
        start = time.perf_counter()
        peak, done = [0, 0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                total, largest = _tree_memory(proc.pid)
                peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        seconds = time.perf_counter() - start
        cpu = _children_cpu() - cpu_before
        done.set()
        sampler.join()
    return {"seconds": round(seconds, 1), "returncode": proc.returncode, "cpu_seconds": round(cpu, 1),
            "peak_rss_gib": round(peak[1] / GIB, 2),  # the largest single process's peak (VmHWM)
            "peak_rss_tree_gib": round(peak[0] / GIB, 2)}  # the whole tree at once


def copy_project(repo: Path, workdir: Path) -> None:
    """`repo`'s pipeline files (git ls-files but data, models, reports, dvc.lock, tests, docs) in a git repo `workdir`."""
    files = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    skip = ("tests/", "data/", "models/", "reports/", "dvc.lock", "docs/")
    for rel in files:
        if rel.startswith(skip) or not (repo / rel).is_file():
            continue
        (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, workdir / rel)
    if not (workdir / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)


def link_folder(link: Path, target: Path) -> None:
    """`link` (replaced if there) pointing at the folder `target`."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.resolve(), target_is_directory=True)


def prepare_workdir(repo: Path, workdir: Path, data: Path, overrides: Path) -> dict:
    """The pipeline in `workdir` (a git repository) with `data` as data/raw/isic2024 and the
    repository's params.yaml merged with `overrides` (whose train_cnn.models replace the list)."""
    copy_project(repo, workdir)
    link_folder(workdir / cat.ISIC2024_RAW, data)
    params = merge_params(yaml.safe_load((repo / "params.yaml").read_text()), yaml.safe_load(overrides.read_text()))
    params["data"]["path"] = cat.ISIC2024_RAW.as_posix()
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def bare_forward_rate(net, image_size: int, batch_size: int, n_meta: int, batches: int = 20,
                      rounds: int = 3) -> float:
    """Images/s of `net`'s forward pass alone on random uint8 batches already in memory, on the
    CPU: the higher of the median of `rounds` with all torch threads on one batch and on the
    streams inference uses (`on_streams`), so a gain of the streams themselves is not counted as
    the input path keeping up."""
    import torch

    from lesion_ml.image.inference import forward_logits, on_streams

    dev = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    data = [{"image": torch.randint(0, 256, (batch_size, 3, image_size, image_size), generator=gen, dtype=torch.uint8),
             **({"meta": torch.randn(batch_size, n_meta, generator=gen)} if n_meta else {})} for _ in range(batches)]
    net.eval()

    def forward(batch: dict) -> torch.Tensor:
        return torch.sigmoid(forward_logits(net, batch, dev))

    rates: dict[str, list[float]] = {"one batch": [], "streams": []}
    with torch.no_grad():
        forward(data[0])  # warm-up
        for _ in range(rounds):
            for way, run in (("one batch", lambda: [forward(b) for b in data]),
                             ("streams", lambda: list(on_streams(forward, data, dev)))):
                start = time.perf_counter()
                run()
                rates[way].append(batch_size * batches / (time.perf_counter() - start))
    return float(max(np.median(r) for r in rates.values()))


def _oof_inference(workdir: Path, params: dict) -> dict[str, Any]:
    """Out-of-fold inference rate of each image model (from its fold histories) against the bare
    forward rate of the same network and batch size."""
    import torch

    from lesion_ml.image.net import LesionNet
    from lesion_ml.io import load_weights

    out = {}
    for name, cfg in params["train_cnn"]["models"].items():
        n_folds = params["split"]["n_folds"]
        runs = [json.loads((workdir / cat.cnn_history(name, k)).read_text()).get("valid_predict")
                for k in range(n_folds) if (workdir / cat.cnn_history(name, k)).is_file()]
        runs = [r for r in runs if r]
        if not runs:
            continue
        images, seconds = sum(r["images"] for r in runs), sum(r["seconds"] for r in runs)
        state = load_weights(workdir / cat.cnn_weights(name, 0))
        n_meta = int(state["meta.0.weight"].shape[1]) if "meta.0.weight" in state else 0
        fusion = cfg.get("fusion", {})
        net = LesionNet(cfg["backbone"], "false", n_meta, fusion.get("hidden", 64), fusion.get("dropout", 0.2))
        net.load_state_dict(state)
        net = net.to(memory_format=torch.channels_last)  # as training holds it (train.to_device)
        batch = cfg.get("eval_batch_size") or 2 * cfg.get("batch_size", 32)  # as training predicts
        bare = bare_forward_rate(net, cfg.get("image_size", 64), batch, n_meta)
        out[name] = {"images": images, "seconds": round(seconds, 1), "images_per_s": round(images / seconds, 1),
                     "bare_forward_per_s": round(bare, 1), "ratio_vs_bare": round(images / seconds / bare, 3),
                     "batch_size": batch}
    return out


def _predict_bare(model_dir: Path, batch_size: int) -> float | None:
    """Bare forward images/s of the final model's image networks used on an image with metadata."""
    from lesion_ml.model.bundle import FinalModel

    model = FinalModel.load(model_dir, "cpu")
    used = [c for c in model.manifest["components"] if c in model.cnns]
    if not used:
        return None
    seconds_per_image = sum(1 / bare_forward_rate(model.cnns[c].net, model.cnns[c].config.image_size, batch_size,
                                                  model.cnns[c].n_meta) for c in used)
    return 1 / seconds_per_image


def _metrics(workdir: Path) -> dict[str, Any]:
    m = json.loads((workdir / cat.METRICS).read_text())
    return {"best_model": m["best_model"],
            "models": {k: {"roc_auc": round(v["roc_auc"], 4), "pauc_80": round(v["pauc_80"], 4)}
                       for k, v in m["models"].items()}}


def pipeline_env(workdir: Path) -> dict[str, str]:
    """The environment of the stages and of `lesion predict`: this interpreter's scripts first on
    PATH, no telemetry, the work folder's own Prefect home."""
    bindir = Path(sys.executable).parent
    return dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '')}", DO_NOT_TRACK="1",
                PREFECT_SERVER_ANALYTICS_ENABLED="false", DVC_NO_ANALYTICS="1", NO_ALBUMENTATIONS_UPDATE="1",
                PREFECT_HOME=str(workdir.resolve() / ".prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")


def _new_result(data: Path, overrides: Path) -> dict[str, Any]:
    """The result before any stage runs: the data set's size, the profile and the machine."""
    import pandas as pd

    meta = pd.read_csv(data / "train-metadata.csv", usecols=["patient_id", "target"])
    return {
        "data": {"path": str(data), "lesions": len(meta), "patients": int(meta["patient_id"].nunique()),
                 "malignant": int(meta["target"].sum())},
        "overrides": yaml.safe_load(overrides.read_text()), "machine": {"cpus": os.cpu_count()},
        "stages": []}  # in pipeline order (a list: the JSON file's keys are sorted)


def _stage_names(workdir: Path, env: dict[str, str]) -> list[str]:
    """The pipeline's stages in `workdir`, in DVC's order."""
    dvc = str(Path(sys.executable).parent / "dvc")
    return subprocess.run([dvc, "stage", "list", "--name-only"], cwd=workdir, env=env,
                          capture_output=True, text=True, check=True).stdout.split()


def _keep_earlier_stages(result: dict[str, Any], stages: list[str], workdir: Path, out: Path | None) -> None:
    """--predict-only: take the stage figures of `out` from a finished run in `workdir`."""
    earlier = json.loads(out.read_text()) if out is not None and out.is_file() else {}
    if [s["stage"] for s in earlier.get("stages", [])] != stages or not (workdir / cat.FINAL / "manifest.json").is_file():
        raise ValueError(f"--predict-only needs a finished run in {workdir} and its figures in {out}")
    result["stages"], result["predict_rerun"] = earlier["stages"], True


def _save(result: dict[str, Any], out: Path | None) -> None:
    """Write the figures so far to `out` (if given), so that they survive a later failure."""
    if out is not None:
        from lesion_ml.io import write_json

        write_json(result, out)


def _run_stages(stages: list[str], workdir: Path, env: dict[str, str], result: dict[str, Any],
                out: Path | None) -> None:
    """Run each stage on its own, measured, appending its figures to `result` (saved after each)."""
    dvc = str(Path(sys.executable).parent / "dvc")
    for stage in stages:
        log = workdir / "logs" / f"{stage.replace('@', '_')}.log"
        print(f"stage {stage} ...", end=" ", flush=True)
        r = run_measured([dvc, "repro", "--single-item", stage], workdir, log, env)
        r["ran"] = "didn't change, skipping" not in log.read_text(errors="replace")
        result["stages"].append({"stage": stage, **r})
        print(f"{r['seconds']:.0f} s, {r['peak_rss_gib']:.2f} GiB" + ("" if r["ran"] else " (unchanged)"), flush=True)
        _save(result, out)
        if r["returncode"] != 0:
            raise RuntimeError(f"stage {stage} failed (exit {r['returncode']}); see {log}")


def _run_predict(data: Path, workdir: Path, env: dict[str, str], workers: int, batch: int,
                 result: dict[str, Any], out: Path | None) -> dict[str, Any]:
    """`lesion predict` on every image of `data` with the final model, measured, and its rate
    against the bare forward pass of its image networks, timed just before and just after the
    command: the ratio is to their mean (the machine's speed drifts over minutes), and
    `ratio_vs_bare_range` gives it against the faster and the slower of the two."""
    log = workdir / "logs" / "predict.log"
    model = workdir / cat.FINAL
    before = _predict_bare(model, batch)  # None: the final model uses no image network
    print("lesion predict ...", end=" ", flush=True)
    # `python -m` from the work folder: the same lesion_ml copy as the stages ran
    r = run_measured([sys.executable, "-m", "lesion_ml.app.cli", "predict", "--model", str(cat.FINAL), "--images",
                      str((data / "train-image.hdf5").resolve()), "--metadata",
                      str((data / "train-metadata.csv").resolve()), "--out", "predictions.csv",
                      "--workers", str(workers), "--batch-size", str(batch)], workdir, log, env)
    if r["returncode"] != 0:
        result["predict"] = r
        _save(result, out)
        raise RuntimeError(f"lesion predict failed (exit {r['returncode']}); see {log}")
    n = result["data"]["lesions"]
    r.update(images=n, workers=workers, batch_size=batch, images_per_s=round(n / r["seconds"], 1))
    r.update(_versus_bare(n, r["seconds"], before, _predict_bare(model, batch) if before else None))
    if "cpu_seconds" in r:  # bound by the CPU when the cores were busy all along
        r.update(cpu_us_per_image=round(r["cpu_seconds"] / n * 1e6, 1),
                 cores_busy=round(r["cpu_seconds"] / r["seconds"] / len(os.sched_getaffinity(0)), 3))
    passes = image_pass_seconds(log.read_text(errors="replace"))
    if before and passes:
        r.update(image_pass_seconds=round(passes, 1),
                 image_pass_ratio_vs_bare=round(n / passes / r["bare_forward_per_s"], 3))
    print(f"{r['seconds']:.0f} s, {r['images_per_s']:.0f} images/s"
          + (f" ({r['ratio_vs_bare']:.2f} x bare forward)" if before else " (no image network)"))
    return r


def _versus_bare(images: int, seconds: float, before: float | None, after: float | None) -> dict[str, Any]:
    """A command's rate against bare forward rates measured before and after it (both None: the
    model has no image network)."""
    if not before or not after:
        return {"bare_forward_per_s": None, "ratio_vs_bare": None}
    rate, bare = images / seconds, (before + after) / 2
    return {"bare_forward_per_s": round(bare, 1), "bare_before_per_s": round(before, 1),
            "bare_after_per_s": round(after, 1), "ratio_vs_bare": round(rate / bare, 3),
            "ratio_vs_bare_range": [round(rate / max(before, after), 3), round(rate / min(before, after), 3)]}


def image_pass_seconds(log: str) -> float | None:
    """The seconds `lesion predict` spent in its passes over the images (read, decode, forward),
    from its log; None when it logged none."""
    from lesion_ml.model.predict import PASS_LOG

    found = re.findall(rf"{PASS_LOG} \S+: \d+ images in ([\d.]+) s", log)
    return sum(map(float, found)) if found else None


def bench_scale(data: Path, workdir: Path, repo: Path = Path("."), overrides: Path = Path("params.scale.yaml"),
                predict_workers: int = 1, predict_batch: int = 256, out: Path | None = None,
                predict_only: bool = False) -> dict[str, Any]:
    """Run the pipeline on `data` in `workdir` stage by stage, then `lesion predict` on every image.

    Args:
        data: an ISIC 2024-format folder (train-image.hdf5 + train-metadata.csv), e.g. from
            `lesion synth --full-size` (its generation is timed separately).
        workdir: created if needed; a stage whose inputs did not change is skipped by DVC and
            reported as such ("ran": false), so a failed run can be continued.
        overrides: the scale profile merged into params.yaml.
        out: the JSON written after every stage (figures so far survive a failure).
        predict_only: keep the stage figures of `out` from an earlier run in `workdir` and run
            only `lesion predict` again (with the repository's current code).

    Raises:
        RuntimeError: a stage failed; its log is named.
    """
    env = pipeline_env(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    params = prepare_workdir(repo.resolve(), workdir, data, overrides)
    result = _new_result(data, overrides)
    stages = _stage_names(workdir, env)
    if predict_only:
        _keep_earlier_stages(result, stages, workdir, out)
        stages = []
    total = time.perf_counter()
    _run_stages(stages, workdir, env, result, out)
    result["dvc_repro_seconds"] = round(sum(s["seconds"] for s in result["stages"]), 1)
    result["oof_inference"] = _oof_inference(workdir, params)
    result["metrics"] = _metrics(workdir)
    _save(result, out)
    result["predict"] = _run_predict(data, workdir, env, predict_workers, predict_batch, result, out)
    result["total_seconds"] = round(time.perf_counter() - total, 1)
    _save(result, out)
    return result


def format_scale_table(r: dict[str, Any]) -> str:
    """The stage table of `bench_scale`'s result."""
    d = r["data"]
    lines = [f"lesion bench scale: {d['lesions']:,} lesions, {d['patients']:,} patients, {d['malignant']} malignant",
             f"  {'stage':<28}{'wall':>10}{'peak RSS':>11}{'tree RSS':>11}"]
    for s in r["stages"]:
        lines.append(f"  {s['stage']:<28}{s['seconds']:>9.0f}s{s['peak_rss_gib']:>9.2f}GiB{s['peak_rss_tree_gib']:>8.2f}GiB"
                     + ("" if s.get("ran", True) else "  (unchanged, not rerun)"))
    if "dvc_repro_seconds" in r:
        lines.append(f"  {'whole dvc repro':<28}{r['dvc_repro_seconds']:>9.0f}s  ({r['dvc_repro_seconds'] / 60:.1f} min)")
    p = r.get("predict")
    if p and "images_per_s" in p:
        vs = (f" = {p['ratio_vs_bare']:.2f} x bare forward ({p['bare_forward_per_s']:,.0f}/s"
              + (f", mean of {p['bare_before_per_s']:,.0f} before and {p['bare_after_per_s']:,.0f} after"
                 if "bare_before_per_s" in p else "") + ")"
              if p["ratio_vs_bare"] is not None else " (no image network in the final model)")
        lines.append(f"  {'lesion predict':<28}{p['seconds']:>9.0f}s{p['peak_rss_gib']:>9.2f}GiB"
                     f"{p['peak_rss_tree_gib']:>8.2f}GiB  {p['images_per_s']:,.0f} images/s{vs}")
        if "cpu_us_per_image" in p:
            lines.append(f"    CPU time                    {p['cpu_seconds']:>6.0f}s  = {p['cpu_us_per_image']:,.0f} "
                         f"core-us an image; the cores {p['cores_busy']:.0%} busy")
        if p.get("image_pass_seconds"):
            lines.append(f"    of which the image pass     {p['image_pass_seconds']:>6.0f}s  = "
                         f"{p['image_pass_ratio_vs_bare']:.2f} x bare forward (the rest: start-up, metadata, "
                         "the metadata models, the CSV)")
    for name, o in r.get("oof_inference", {}).items():
        lines.append(f"  OOF inference {name}: {o['images_per_s']:,.0f} images/s = {o['ratio_vs_bare']:.2f} x bare "
                     f"forward ({o['bare_forward_per_s']:,.0f}/s, batch {o['batch_size']})")
    for name, m in r.get("metrics", {}).get("models", {}).items():
        lines.append(f"  OOF {name:<24} ROC-AUC {m['roc_auc']:.4f}  pAUC80 {m['pauc_80']:.4f}")
    return "\n".join(lines)
