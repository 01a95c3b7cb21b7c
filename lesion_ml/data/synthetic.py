"""A deterministic demo data set in ISIC 2024 format (train-image.hdf5 + train-metadata.csv).

Each patient has a skin tone and a "nevus phenotype"; their benign lesions resemble each other,
which gives patient-relative features their signal. Malignant lesions are drawn larger, more
irregular, more asymmetric and multi-coloured. The tbp_lv_* columns are MEASURED on the drawn
tile (colour in CIELAB, area, perimeter, axes, asymmetry) and then perturbed with measurement
noise, so images and metadata agree without either being a perfect predictor. A share of
malignant lesions is drawn benign-looking and a share of benign ones atypical, so the task is
learnable but not trivial. Tiles are drawn and measured by lesion_ml.data.synthetic_render.
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import multiprocessing.pool
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd

from lesion_ml.config import SyntheticConfig
from lesion_ml.data.schema import ISIC2024_COLUMNS
from lesion_ml.data.synthetic_render import Lesion, render_tile
from lesion_ml.io import atomic_path

ATTRIBUTIONS = (  # (name, weight, licence) roughly as in the ISIC 2024 training set
    ("Memorial Sloan Kettering Cancer Center", 0.32, "CC-BY"),
    ("Department of Dermatology, Hospital Clínic de Barcelona", 0.26, "CC-BY-NC"),
    ("University Hospital of Basel", 0.16, "CC-BY-NC"),
    ("Frazer Institute, The University of Queensland, Dermatology Research Centre", 0.13, "CC-BY"),
    ("ACEMID MIA", 0.07, "CC-0"),
    ("ViDIR Group, Department of Dermatology, Medical University of Vienna", 0.04, "CC-BY-NC"),
    ("Department of Dermatology, University of Athens, Andreas Syggros Hospital of Skin and "
     "Venereal Diseases, Alexander Stratigos, Konstantinos Liopyris", 0.02, "CC-BY"),
)

# detailed location -> (simple location, anatom_site_general, (x, y, z) centre on the body model)
LOCATIONS = {
    "Torso Back Top Third": ("Torso Back", "posterior torso", (0, 1350, -120)),
    "Torso Back Middle Third": ("Torso Back", "posterior torso", (0, 1180, -130)),
    "Torso Back Bottom Third": ("Torso Back", "posterior torso", (0, 1020, -120)),
    "Torso Front Top Half": ("Torso Front", "anterior torso", (0, 1300, 110)),
    "Torso Front Bottom Half": ("Torso Front", "anterior torso", (0, 1080, 120)),
    "Left Arm - Upper": ("Left Arm", "upper extremity", (250, 1300, 0)),
    "Left Arm - Lower": ("Left Arm", "upper extremity", (330, 1000, 30)),
    "Right Arm - Upper": ("Right Arm", "upper extremity", (-250, 1300, 0)),
    "Right Arm - Lower": ("Right Arm", "upper extremity", (-330, 1000, 30)),
    "Left Leg - Upper": ("Left Leg", "lower extremity", (110, 700, 40)),
    "Left Leg - Lower": ("Left Leg", "lower extremity", (110, 300, 20)),
    "Right Leg - Upper": ("Right Leg", "lower extremity", (-110, 700, 40)),
    "Right Leg - Lower": ("Right Leg", "lower extremity", (-110, 300, 20)),
    "Head & Neck": ("Head & Neck", "head/neck", (0, 1580, 40)),
    "Unknown": ("Unknown", None, (0, 1000, 0)),
}
_LOC_NAMES = tuple(LOCATIONS)
_LOC_WEIGHTS = np.array([14, 12, 10, 10, 8, 6, 6, 6, 6, 5, 5, 5, 5, 6, 1.5], dtype=float)

MALIGNANT_KINDS = {  # kind -> (weight, iddx chain)
    "bcc": (0.45, ["Malignant", "Malignant adnexal epithelial proliferations - Follicular",
                   "Basal cell carcinoma", "Basal cell carcinoma, Nodular"]),
    "mel": (0.35, ["Malignant", "Malignant melanocytic proliferations (Melanoma)",
                   "Melanoma Invasive", "Melanoma Invasive, Superficial spreading"]),
    "scc": (0.20, ["Malignant", "Malignant epidermal proliferations",
                   "Squamous cell carcinoma, Invasive"]),
}


CHUNK_LESIONS = 4000  # lesions rendered per work unit: bounds memory, and the unit of parallel work


def generate_synthetic(out_dir: Path | str, cfg: SyntheticConfig, workers: int = 1,
                       progress: Callable[[int, int], None] | None = None) -> tuple[Path, Path]:
    """Write ``train-image.hdf5`` and ``train-metadata.csv`` into `out_dir`.

    Streams: lesions are rendered in chunks of whole patients and written as they come, so memory
    stays bounded at any size (ISIC 2024's 401,059 lesions included). Every patient draws from its
    own generator seeded by (`cfg.seed`, patient number), so the output is identical for the same
    `cfg` whatever the number of `workers` (processes). Files are written atomically.

    Args:
        out_dir: Folder of the two files (created).
        cfg: Sizes, shares and seed.
        workers: Processes that render tiles (1: this process only).
        progress: Called with (lesions written, total) after each chunk.

    Returns:
        The paths of the HDF5 file and of the metadata CSV.
    """
    out_dir = Path(out_dir)
    work, n, first_malignant = _plan(cfg)
    h5_path, csv_path = out_dir / "train-image.hdf5", out_dir / "train-metadata.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        results = map(_render_chunk, work)
        if workers > 1 and len(work) > 1:
            pool = stack.enter_context(mp.get_context("spawn").Pool(workers))
            results = _in_order(pool, work, ahead=2 * workers)
        parts = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".synth-", dir=out_dir)))
        h5_tmp = stack.enter_context(atomic_path(h5_path))
        _write_chunks(results, [job[4] for job in work], h5_tmp, parts, first_malignant, n, progress)
        with atomic_path(csv_path) as tmp, open(tmp, "wb") as out:
            for k in range(len(work)):
                with open(parts / f"{k:06d}.csv", "rb") as part:
                    shutil.copyfileobj(part, out)
    return h5_path, csv_path


def _plan(cfg: SyntheticConfig) -> tuple[list[tuple], int, int]:
    """The draws of the whole set from the generator of `cfg.seed` (patients, which lesions are
    malignant, the image numbers), cut into work units of whole patients for `_render_chunk`.

    Returns:
        The work units, the number of lesions and the row of the first malignant lesion.
    """
    rng = np.random.default_rng(cfg.seed)
    patients = _draw_patients(rng, cfg)
    n = int(patients["n_lesions"].sum())
    malignant = _choose_malignant(rng, patients, n, cfg)
    isic_numbers = rng.choice(np.arange(15_000, 9_999_999), size=n, replace=False)
    first_malignant = int(np.flatnonzero(malignant)[0])
    starts = np.concatenate([[0], np.cumsum(patients["n_lesions"].to_numpy())])
    work = [(cfg, patients.iloc[a:b], malignant[starts[a]:starts[b]], isic_numbers[starts[a]:starts[b]],
             int(starts[a])) for a, b in _chunks(starts)]
    return work, n, first_malignant


def _chunks(starts: np.ndarray) -> list[tuple[int, int]]:
    """(first patient, end patient) runs with about CHUNK_LESIONS lesions each; `starts` holds the
    first row of every patient and, last, the number of rows."""
    chunks = []
    lo = 0
    n_patients = len(starts) - 1
    for hi in range(1, n_patients + 1):
        if starts[hi] - starts[lo] >= CHUNK_LESIONS or hi == n_patients:
            chunks.append((lo, hi))
            lo = hi
    return chunks


def _write_chunks(results: Iterator[tuple], first_rows: list[int], h5_path: Path, parts: Path, first_malignant: int,
                  total: int, progress: Callable[[int, int], None] | None) -> None:
    """Each rendered chunk's tiles into the HDF5 file at `h5_path` and its metadata into the CSV
    part `parts/<k>.csv` (the first with the header), as the chunks come; `progress` is called
    with (lesions written, `total`) after each chunk.

    The first malignant lesion gets a fifth diagnosis level; when no lesion is a melanoma, it also
    gets a mitotic index, so that the text column reads back as text.
    """
    held, any_melanoma, done = None, False, 0
    with h5py.File(h5_path, "w") as f:
        for k, (images, rows) in enumerate(results):
            for isic_id, data in images:
                f.create_dataset(isic_id, data=np.bytes_(data))
            meta = _to_frame(rows)
            any_melanoma |= bool(meta["mel_mitotic_index"].notna().any())
            i = first_malignant - first_rows[k]
            if 0 <= i < len(meta):  # the first malignant lesion gets a fifth diagnosis level
                meta.loc[meta.index[i], "iddx_5"] = f"{meta['iddx_4'].iat[i] or meta['iddx_3'].iat[i]}, other"
                held = (k, i, meta)
            meta.to_csv(parts / f"{k:06d}.csv", index=False, header=k == 0)
            done += len(meta)
            if progress:
                progress(done, total)
    if not any_melanoma:  # give the text column one value, so that it reads back as text
        k, i, meta = held
        meta.loc[meta.index[i], "mel_mitotic_index"] = "0/mm^2"
        meta.to_csv(parts / f"{k:06d}.csv", index=False, header=k == 0)




def _in_order(pool: mp.pool.Pool, work: list, ahead: int) -> Iterator[tuple]:
    """`_render_chunk` of each job on the pool, in order, with at most `ahead` chunks in flight
    (so that finished chunks never pile up in memory)."""
    pending: deque = deque()
    for job in work:
        pending.append(pool.apply_async(_render_chunk, (job,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _render_chunk(job: tuple) -> tuple[list[tuple[str, bytes]], list[dict]]:
    """Tiles (isic_id, JPEG bytes) and metadata rows of a run of whole patients."""
    cfg, patients, malignant, isic_numbers, _ = job
    images, rows = [], []
    i = 0
    for number, p in zip(patients.index, patients.itertuples(index=False)):
        rng = np.random.default_rng([cfg.seed, int(number)])
        for _ in range(p.n_lesions):
            lesion = _draw_lesion(rng, p, bool(malignant[i]))
            size = int(rng.integers(cfg.tile_px[0], cfg.tile_px[1] + 1))
            tile, measured = render_tile(rng, lesion, p, size)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(tile, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
            assert ok, "JPEG encoding failed"
            isic_id = f"ISIC_{isic_numbers[i]:07d}"
            rows.append(_metadata_row(rng, isic_id, p, lesion, measured))
            images.append((isic_id, jpeg.tobytes()))
            i += 1
    return images, rows


def _draw_patients(rng: np.random.Generator, cfg: SyntheticConfig) -> pd.DataFrame:
    n = cfg.n_patients
    ids = rng.choice(np.arange(10_000, 9_999_999), size=n, replace=False)
    att = rng.choice(len(ATTRIBUTIONS), size=n, p=np.array([a[1] for a in ATTRIBUTIONS]) /
                     sum(a[1] for a in ATTRIBUTIONS))
    age = rng.choice(np.arange(20, 90, 5), size=n).astype(float)
    age[rng.random(n) < 0.01] = np.nan
    sex = rng.choice(np.array(["male", "female"], dtype=object), size=n, p=[0.52, 0.48])
    sex[rng.random(n) < 0.025] = None
    if cfg.n_lesions is None:
        counts = rng.integers(cfg.lesions_per_patient[0], cfg.lesions_per_patient[1] + 1, size=n)
    else:  # a fixed total, heavy-tailed over patients as in ISIC 2024 (a few patients have thousands)
        weight = rng.lognormal(0.0, 1.1, n)
        counts = 1 + rng.multinomial(cfg.n_lesions - n, weight / weight.sum())
    return pd.DataFrame({
        "patient_id": [f"IP_{x:07d}" for x in ids],
        "age_approx": age,
        "sex": sex,
        "attribution": att,
        "n_lesions": counts,
        "skin_L": rng.normal(60, 7, n).clip(35, 80),
        "skin_A": rng.normal(17, 3, n).clip(8, 30),
        "skin_B": rng.normal(24, 3, n).clip(12, 35),
        "nevus_mm": np.exp(rng.normal(math.log(3.2), 0.2, n)),
        "nevus_contrast": rng.normal(12, 3, n).clip(4, 25),
        "nevus_aspect": rng.uniform(0.65, 0.95, n),
    })


def _choose_malignant(rng: np.random.Generator, patients: pd.DataFrame, n: int, cfg: SyntheticConfig) -> np.ndarray:
    """Exactly `cfg.n_malignant` malignant lesions (else round(fraction * n), at least one), older
    patients more often."""
    age = np.repeat(patients["age_approx"].fillna(55).to_numpy(), patients["n_lesions"].to_numpy())
    weight = np.exp((age - 55) / 20)
    k = cfg.n_malignant if cfg.n_malignant is not None else min(n - 1, max(1, round(cfg.malignant_fraction * n)))
    chosen = rng.choice(n, size=k, replace=False, p=weight / weight.sum())
    out = np.zeros(n, dtype=bool)
    out[chosen] = True
    return out


def _draw_lesion(rng: np.random.Generator, p, malignant: bool) -> Lesion:
    subtle = malignant and rng.random() < 0.25  # benign-looking malignancies
    atypical = (not malignant) and rng.random() < 0.06  # dysplastic-looking benign lesions
    if malignant and not subtle or atypical:
        return Lesion(
            malignant=malignant,
            diameter_mm=float(p.nevus_mm * np.exp(rng.normal(math.log(1.9), 0.35))),
            aspect=float(rng.uniform(0.5, 0.9)),
            irregularity=float(rng.uniform(0.06, 0.22)),
            asymmetry=float(rng.uniform(0.15, 0.45)),
            n_colours=int(rng.integers(2, 5)),
            contrast=float(p.nevus_contrast * rng.uniform(1.0, 1.8)),
            redness=float(rng.uniform(0, 10)),
        )
    return Lesion(
        malignant=malignant,
        diameter_mm=float(p.nevus_mm * np.exp(rng.normal(0, 0.22))),
        aspect=float(np.clip(p.nevus_aspect + rng.normal(0, 0.05), 0.5, 1.0)),
        irregularity=float(rng.uniform(0.0, 0.07)),
        asymmetry=float(rng.uniform(0.0, 0.15)),
        n_colours=int(rng.choice([1, 1, 1, 2])),
        contrast=float(p.nevus_contrast * rng.uniform(0.8, 1.2)),
        redness=float(rng.uniform(0, 4)),
    )



def _metadata_row(rng: np.random.Generator, isic_id: str, p, les: Lesion, m: dict) -> dict:
    def noisy(v: float, rel: float = 0.08) -> float:
        return float(v * (1 + rng.normal(0, rel)))

    loc = _LOC_NAMES[rng.choice(len(_LOC_NAMES), p=_LOC_WEIGHTS / _LOC_WEIGHTS.sum())]
    simple, site, (x0, y0, z0) = LOCATIONS[loc]
    dL, dA, dB = m["L"] - m["Lext"], m["A"] - m["Aext"], m["B"] - m["Bext"]
    ratio = m["perimeter"] ** 2 / max(m["area"], 1e-6)
    border = float(np.clip((ratio - 4 * math.pi) / 2.5 + 8 * m["asym"] + rng.normal(0, 0.6), 0, 10))
    colour = float(np.clip(0.9 * m["color_std"] + 1.2 * m["radial"] + rng.normal(0, 0.8), 0, 10))
    evidence = 2.5 - 0.35 * m["major"] - 0.25 * border - 0.3 * colour + rng.normal(0, 2.0)
    att_name, _, licence = ATTRIBUTIONS[p.attribution]
    kind = None
    if les.malignant:
        kinds = list(MALIGNANT_KINDS)
        kind = kinds[rng.choice(len(kinds), p=[MALIGNANT_KINDS[k][0] for k in kinds])]
    chain = MALIGNANT_KINDS[kind][1] if kind else ["Benign"]
    row = {
        "isic_id": isic_id, "target": int(les.malignant), "patient_id": p.patient_id,
        "age_approx": p.age_approx, "sex": p.sex, "anatom_site_general": site,
        "clin_size_long_diam_mm": round(noisy(max(m["major"], 1.0), 0.1), 2),
        "image_type": "TBP tile: close-up",
        "tbp_tile_type": "3D: XP" if rng.random() < 0.71 else "3D: white",
        "tbp_lv_A": noisy(m["A"], 0.05), "tbp_lv_Aext": noisy(m["Aext"], 0.05),
        "tbp_lv_B": noisy(m["B"], 0.05), "tbp_lv_Bext": noisy(m["Bext"], 0.05),
        "tbp_lv_L": noisy(m["L"], 0.04), "tbp_lv_Lext": noisy(m["Lext"], 0.03),
        "tbp_lv_areaMM2": noisy(m["area"]), "tbp_lv_area_perim_ratio": noisy(ratio, 0.06),
        "tbp_lv_color_std_mean": max(0.0, noisy(m["color_std"], 0.15)),
        "tbp_lv_deltaA": dA + rng.normal(0, 0.5), "tbp_lv_deltaB": dB + rng.normal(0, 0.5),
        "tbp_lv_deltaL": dL + rng.normal(0, 0.7),
        "tbp_lv_deltaLB": math.hypot(dL, dB) + abs(rng.normal(0, 0.3)),
        "tbp_lv_deltaLBnorm": math.hypot(dL, dB) * rng.uniform(0.6, 0.95),
        "tbp_lv_eccentricity": float(np.clip(math.sqrt(max(0.0, 1 - (m["minor"] / max(m["major"], 1e-6)) ** 2))
                                             + rng.normal(0, 0.03), 0, 0.999)),
        "tbp_lv_location": loc, "tbp_lv_location_simple": simple,
        "tbp_lv_minorAxisMM": noisy(m["minor"]),
        "tbp_lv_nevi_confidence": float(100 / (1 + math.exp(-evidence))),
        "tbp_lv_norm_border": border, "tbp_lv_norm_color": colour,
        "tbp_lv_perimeterMM": noisy(m["perimeter"]),
        "tbp_lv_radial_color_std_max": max(0.0, noisy(m["radial"], 0.15)),
        "tbp_lv_stdL": noisy(m["stdL"], 0.1), "tbp_lv_stdLExt": noisy(m["stdLExt"], 0.1),
        "tbp_lv_symm_2axis": float(np.clip(m["asym"] + rng.normal(0, 0.04), 0.05, 0.95)),
        "tbp_lv_symm_2axis_angle": int(5 * rng.integers(0, 36)),
        "tbp_lv_x": x0 + rng.normal(0, 60), "tbp_lv_y": y0 + rng.normal(0, 60), "tbp_lv_z": z0 + rng.normal(0, 40),
        "attribution": att_name, "copyright_license": licence,
        "lesion_id": f"IL_{rng.integers(0, 9_999_999):07d}" if les.malignant or rng.random() < 0.03 else None,
        "iddx_full": "::".join(chain),
    }
    row["tbp_lv_C"] = math.hypot(row["tbp_lv_A"], row["tbp_lv_B"])
    row["tbp_lv_Cext"] = math.hypot(row["tbp_lv_Aext"], row["tbp_lv_Bext"])
    row["tbp_lv_H"] = math.degrees(math.atan2(row["tbp_lv_B"], row["tbp_lv_A"]))
    row["tbp_lv_Hext"] = math.degrees(math.atan2(row["tbp_lv_Bext"], row["tbp_lv_Aext"]))
    for level in range(1, 6):
        row[f"iddx_{level}"] = chain[level - 1] if level <= len(chain) else None
    melanoma = kind == "mel"
    row["mel_mitotic_index"] = str(rng.choice(["0/mm^2", "<1/mm^2", "1/mm^2", "2/mm^2"])) if melanoma else None
    row["mel_thick_mm"] = round(float(rng.uniform(0.2, 2.5)), 2) if melanoma else np.nan
    row["tbp_lv_dnn_lesion_confidence"] = float(100 / (1 + math.exp(-rng.normal(3, 2))))
    return row


def _to_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)[list(ISIC2024_COLUMNS)]
    for col, dtype in ISIC2024_COLUMNS.items():
        df[col] = df[col].astype(object if dtype == "object" else dtype)
    return df
