"""A fast, image-free generator of ISIC 2024 (SLICE-3D) train-metadata at full scale.

Built for tabular benchmarks: 401,059 rows in about a second, fully vectorised with numpy.
Each patient gets a lesion count (lognormal-ish, at least one), an age, a sex, a skin colour and a
"nevus phenotype" (typical size, shape, contrast, colour variegation). Benign lesions scatter
around their patient's phenotype; malignant ones deviate from it ("ugly duckling"), so features
taken relative to the patient carry signal beyond the raw values. About a quarter of malignant
lesions are drawn benign-looking and a few per cent of benign lesions atypical, so a good GBDT
ranks well but not perfectly.

Geometry and colour columns are kept internally consistent: area ~ pi/4 * long * minor axis,
perimeter = ellipse perimeter * jaggedness, area_perim_ratio = perimeter^2 / area (>= 4*pi),
C = hypot(A, B), H = degrees(atan2(B, A)), deltaA = A - Aext (likewise B, L) and
deltaLB ~ hypot(deltaL, deltaB).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lesion_ml.data.schema import ISIC2024_COLUMNS
from lesion_ml.data.synthetic import ATTRIBUTIONS, LOCATIONS, MALIGNANT_KINDS

# Shares of rows, roughly as in the real 401,059-row training file.
_AGE_MISSING = 0.007
_SEX_MISSING = 0.029
_SITE_MISSING = 0.0144  # the "Unknown" location has no anatom_site_general
_LESION_ID_SHARE = 0.055
_XP_SHARE = 0.713
_MALE_SHARE = 0.62  # of patients
# Overlap between the classes.
_SUBTLE_MALIGNANT = 0.25  # malignant lesions drawn benign-looking
_ATYPICAL_BENIGN = 0.025  # benign lesions drawn malignant-looking
_LARGE_BENIGN = 0.03  # large but regular benign lesions (seborrhoeic keratosis-like), at age 55

# Relative frequency of each detailed location (not "Unknown"), and the tilt for malignant lesions.
_LOCATION_WEIGHTS = {
    "Torso Back Top Third": 14, "Torso Back Middle Third": 12, "Torso Back Bottom Third": 10,
    "Torso Front Top Half": 10, "Torso Front Bottom Half": 8, "Head & Neck": 6,
}
_MALIGNANT_TILT = {"Head & Neck": 3.0}
_MITOTIC = np.array(["0/mm^2", "<1/mm^2", "1/mm^2", "2/mm^2", "3/mm^2", "4/mm^2", ">4/mm^2"],
                    dtype=object)


def generate_metadata(n_rows: int = 401_059, n_patients: int = 1_042,
                      malignant_fraction: float = 393 / 401_059, seed: int = 0) -> pd.DataFrame:
    """Draw an ISIC 2024-format metadata table without images.

    Args:
        n_rows: Number of lesions (rows); at least `n_patients`.
        n_patients: Number of distinct patients; each has at least one lesion.
        malignant_fraction: Share of malignant rows; exactly ``max(1, round(fraction * n_rows))``
            rows get ``target == 1`` (older patients are more likely to have them).
        seed: Seed of the only random generator used; the same arguments give the same frame.

    Returns:
        A DataFrame with the 55 columns of ``ISIC2024_COLUMNS`` in file order and those dtypes
        (text columns as object dtype holding str or None).

    Raises:
        ValueError: If the sizes or the fraction are out of range.
    """
    if n_patients < 1 or n_rows < n_patients:
        raise ValueError(f"need 1 <= n_patients <= n_rows, got {n_patients=} {n_rows=}")
    if not 0.0 <= malignant_fraction <= 1.0:
        raise ValueError(f"malignant_fraction must lie in [0, 1], got {malignant_fraction}")
    if n_rows > 9_000_000:
        raise ValueError("at most 9,000,000 rows fit the 7-digit isic_id format")
    rng = np.random.default_rng(seed)
    pat = _draw_patients(rng, n_rows, n_patients)
    pid = rng.permutation(np.repeat(np.arange(n_patients), pat["n_lesions"]))  # patients interleaved
    age = pat["age"][pid]
    target = _choose_malignant(rng, age, min(n_rows, max(1, round(malignant_fraction * n_rows))))
    sev, large = _draw_severity(rng, target, age)

    cols: dict[str, np.ndarray] = {
        "isic_id": _format_ids("ISIC_", _unique_ints(rng, n_rows, 15_000, 10_000_000), 7),
        "target": target.astype(np.int64),
        "patient_id": pat["patient_id"][pid],
        "age_approx": age,
        "sex": pat["sex"][pid],
        "image_type": np.full(n_rows, "TBP tile: close-up", dtype=object),
        "tbp_tile_type": np.where(rng.random(n_rows) < _XP_SHARE, "3D: XP", "3D: white").astype(object),
        "attribution": pat["attribution"][pid],
        "copyright_license": pat["license"][pid],
    }
    cols.update(_location_columns(rng, target))
    shape = _shape_columns(rng, pat, pid, sev, large)
    cols.update(shape)
    cols.update(_colour_columns(rng, pat, pid, sev, shape))
    cols.update(_diagnosis_columns(rng, target, sev))
    return _assemble(cols)


def _draw_patients(rng: np.random.Generator, n_rows: int, n_patients: int) -> dict[str, np.ndarray]:
    """Per-patient counts, demographics and nevus phenotype (arrays of length n_patients)."""
    weight = rng.lognormal(0.0, 1.1, n_patients)
    n_lesions = 1 + rng.multinomial(n_rows - n_patients, weight / weight.sum())
    age = np.clip(np.round(rng.normal(57, 14, n_patients) / 5) * 5, 15, 85)
    age[_patients_covering(rng, n_lesions, _AGE_MISSING * n_rows)] = np.nan
    sex = np.where(rng.random(n_patients) < _MALE_SHARE, "male", "female").astype(object)
    sex[_patients_covering(rng, n_lesions, _SEX_MISSING * n_rows)] = None
    att_p = np.array([a[1] for a in ATTRIBUTIONS], dtype=float)
    att = _draw_codes(rng, att_p, n_patients)
    return {
        "n_lesions": n_lesions,
        "patient_id": _format_ids("IP_", _unique_ints(rng, n_patients, 10_000, 10_000_000), 7),
        "age": age,
        "sex": sex,
        "attribution": np.array([a[0] for a in ATTRIBUTIONS], dtype=object)[att],
        "license": np.array([a[2] for a in ATTRIBUTIONS], dtype=object)[att],
        # nevus phenotype: benign lesions of the patient scatter around these
        "nevus_mm": np.exp(rng.normal(math.log(3.3), 0.3, n_patients)),
        "aspect": rng.uniform(0.55, 0.82, n_patients),
        "jag": 1.06 + rng.gamma(2.0, 0.03, n_patients),
        "symm": rng.normal(0.25, 0.05, n_patients).clip(0.08, 0.5),
        "contrast": rng.normal(9.5, 2.8, n_patients).clip(3, 22),
        "red": rng.normal(5.5, 2.5, n_patients),
        "tan": rng.normal(1.5, 1.5, n_patients),
        "colour_var": np.exp(rng.normal(math.log(0.8), 0.35, n_patients)),
        "nevi_bias": rng.normal(-2.5, 3.0, n_patients),
        # skin outside the lesions
        "skin_L": rng.normal(55, 10, n_patients).clip(25, 85),
        "skin_A": rng.normal(15, 3.2, n_patients).clip(4, 32),
        "skin_B": rng.normal(26, 4.2, n_patients).clip(10, 42),
        "skin_stdL": np.exp(rng.normal(math.log(2.0), 0.2, n_patients)),
    }


def _patients_covering(rng: np.random.Generator, counts: np.ndarray, target_rows: float) -> np.ndarray:
    """A random set of patients whose lesions add up to about `target_rows` rows (not more)."""
    order = rng.permutation(len(counts))
    cand = order[counts[order] <= target_rows]
    cum = np.cumsum(counts[cand])
    take, rest = cand[cum <= target_rows], cand[cum > target_rows]
    left = target_rows - counts[take].sum()
    fits = rest[counts[rest] <= left]
    if fits.size:
        take = np.append(take, fits[np.argmax(counts[fits])])
    mask = np.zeros(len(counts), dtype=bool)
    mask[take] = True
    return mask


def _choose_malignant(rng: np.random.Generator, age: np.ndarray, k: int) -> np.ndarray:
    """Exactly k malignant rows, weighted towards older patients (weighted sampling by keys)."""
    n = len(age)
    weight = np.exp((np.nan_to_num(age, nan=55.0) - 55.0) / 30.0)
    keys = rng.exponential(size=n) / weight
    out = np.zeros(n, dtype=bool)
    out[np.argpartition(keys, k - 1)[:k] if k < n else slice(None)] = True
    return out


def _draw_severity(rng: np.random.Generator, target: np.ndarray,
                   age: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latent malignant look in [0, 1] per row, and a flag for large regular benign lesions."""
    n = len(target)
    u = rng.random(n)
    subtle = target & (u < _SUBTLE_MALIGNANT)
    atypical = ~target & (u < _ATYPICAL_BENIGN)
    sev = np.where(target, rng.uniform(0.4, 1.0, n), 0.0)
    sev = np.where(subtle, rng.uniform(0.05, 0.3, n), sev)
    sev = np.where(atypical, rng.uniform(0.15, 0.6, n), sev)
    p_large = _LARGE_BENIGN * np.exp((np.nan_to_num(age, nan=55.0) - 55.0) / 20.0)
    large = ~target & ~atypical & (rng.random(n) < p_large)
    return sev, large


def _location_columns(rng: np.random.Generator, target: np.ndarray) -> dict[str, np.ndarray]:
    names = list(LOCATIONS)
    known = np.array([0.0 if nm == "Unknown" else _LOCATION_WEIGHTS.get(nm, 5.5) for nm in names])
    benign = known / known.sum() * (1 - _SITE_MISSING) + _SITE_MISSING * (np.array(names) == "Unknown")
    malignant = benign * np.array([_MALIGNANT_TILT.get(nm, 1.0) for nm in names])
    n = len(target)
    code = np.where(target, _draw_codes(rng, malignant, n), _draw_codes(rng, benign, n))
    simple = np.array([LOCATIONS[nm][0] for nm in names], dtype=object)
    site = np.array([LOCATIONS[nm][1] for nm in names], dtype=object)
    centre = np.array([LOCATIONS[nm][2] for nm in names], dtype=float)[code]
    xyz = centre + rng.normal(0.0, 1.0, (n, 3)) * np.array([70.0, 90.0, 50.0])
    return {
        "anatom_site_general": site[code], "tbp_lv_location": np.array(names, dtype=object)[code],
        "tbp_lv_location_simple": simple[code],
        "tbp_lv_x": xyz[:, 0], "tbp_lv_y": xyz[:, 1], "tbp_lv_z": xyz[:, 2],
    }


def _shape_columns(rng: np.random.Generator, pat: dict[str, np.ndarray], pid: np.ndarray,
                   sev: np.ndarray, large: np.ndarray) -> dict[str, np.ndarray]:
    """Size, shape, border and asymmetry; malignant lesions grow away from the patient's nevi."""
    n = len(pid)
    log_long = (np.log(pat["nevus_mm"][pid]) + rng.normal(0.0, 0.2, n)
                + sev * (0.95 + 0.35 * rng.normal(size=n)) + large * rng.normal(0.75, 0.3, n))
    long_mm = np.round(np.exp(log_long).clip(1.0, 80.0), 2)
    aspect = (pat["aspect"][pid] + rng.normal(0.0, 0.06, n) - 0.2 * sev * rng.random(n)).clip(0.25, 1.0)
    minor = long_mm * aspect
    area = math.pi / 4 * long_mm * minor * np.exp(-np.abs(rng.normal(0.0, 0.06, n)) - 0.15 * sev)
    a, b = long_mm / 2, minor / 2
    h = ((a - b) / (a + b)) ** 2
    ellipse = math.pi * (a + b) * (1 + 3 * h / (10 + np.sqrt(4 - 3 * h)))  # Ramanujan
    jag = pat["jag"][pid] + np.abs(rng.normal(0.0, 0.05, n)) + sev * rng.uniform(0.1, 0.5, n)
    perimeter = ellipse * jag
    ratio = perimeter**2 / area  # >= 4*pi: an ellipse is no better than a circle, jag >= 1
    symm = (pat["symm"][pid] + rng.normal(0.0, 0.06, n) + sev * rng.uniform(0.05, 0.35, n)).clip(0.03, 0.95)
    border = ((ratio - 4 * math.pi) / 2.8 + 3.0 * symm + rng.normal(0.0, 0.5, n)).clip(0.0, 10.0)
    ecc = (np.sqrt(1 - np.minimum(aspect, 1.0) ** 2) + rng.normal(0.0, 0.03, n)).clip(0.0, 0.995)
    return {
        "clin_size_long_diam_mm": long_mm, "tbp_lv_minorAxisMM": minor, "tbp_lv_areaMM2": area,
        "tbp_lv_perimeterMM": perimeter, "tbp_lv_area_perim_ratio": ratio,
        "tbp_lv_eccentricity": ecc, "tbp_lv_symm_2axis": symm, "tbp_lv_norm_border": border,
        "tbp_lv_symm_2axis_angle": 5 * rng.integers(0, 36, n, dtype=np.int64),
    }


def _colour_columns(rng: np.random.Generator, pat: dict[str, np.ndarray], pid: np.ndarray,
                    sev: np.ndarray, shape: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CIELAB inside/outside, contrasts, variegation and the nevus CNN score."""
    n = len(pid)
    l_ext = (pat["skin_L"][pid] + rng.normal(0.0, 3.5, n)).clip(15.0, 92.0)
    a_ext = (pat["skin_A"][pid] + rng.normal(0.0, 1.8, n)).clip(1.0, 40.0)
    b_ext = (pat["skin_B"][pid] + rng.normal(0.0, 2.0, n)).clip(4.0, 48.0)
    dev = sev * rng.normal(size=(3, n))  # malignant colour departs from the patient's, any direction
    d_l = -pat["contrast"][pid] * np.exp(rng.normal(0.0, 0.22, n)) + 6.0 * dev[0] - 3.0 * sev
    d_a = pat["red"][pid] + rng.normal(0.0, 1.8, n) + 4.0 * dev[1]
    d_b = pat["tan"][pid] + rng.normal(0.0, 1.3, n) + 4.0 * dev[2] - 1.5 * sev
    lum = (l_ext + d_l).clip(2.0, 98.0)
    a_in, b_in = a_ext + d_a, b_ext + d_b
    d_l = lum - l_ext
    delta_lb = np.hypot(d_l, d_b) * np.exp(np.abs(rng.normal(0.0, 0.04, n)))

    long_mm = shape["clin_size_long_diam_mm"]
    tiny = rng.random(n) < ((1.8 - long_mm) / 1.2).clip(0.0, 0.9)  # too few pixels to measure colour
    colour_std = pat["colour_var"][pid] * np.exp(rng.normal(0.0, 0.35, n)) + sev * rng.gamma(2.0, 0.9, n)
    radial = (0.5 * colour_std * np.exp(rng.normal(0.0, 0.3, n)) + 0.35 * np.exp(rng.normal(0.0, 0.5, n))
              + sev * rng.gamma(2.0, 0.5, n))
    norm_colour = (1.4 * colour_std + 1.2 * radial + rng.normal(0.0, 0.5, n)).clip(0.0, 10.0)
    colour_std, radial, norm_colour = (np.where(tiny, 0.0, v) for v in (colour_std, radial, norm_colour))
    std_l = (0.6 + 0.18 * np.abs(d_l)) * np.exp(rng.normal(0.0, 0.3, n)) + 2.0 * sev * rng.random(n)

    nevi_logit = pat["nevi_bias"][pid] + rng.normal(0.0, 4.5, n) - 5.0 * sev
    dnn_logit = rng.normal(7.0, 2.5, n) - 8.0 * sev * rng.random(n)
    return {
        "tbp_lv_L": lum, "tbp_lv_Lext": l_ext, "tbp_lv_A": a_in, "tbp_lv_Aext": a_ext,
        "tbp_lv_B": b_in, "tbp_lv_Bext": b_ext,
        "tbp_lv_C": np.hypot(a_in, b_in), "tbp_lv_Cext": np.hypot(a_ext, b_ext),
        "tbp_lv_H": np.degrees(np.arctan2(b_in, a_in)), "tbp_lv_Hext": np.degrees(np.arctan2(b_ext, a_ext)),
        "tbp_lv_deltaA": a_in - a_ext, "tbp_lv_deltaB": b_in - b_ext, "tbp_lv_deltaL": d_l,
        "tbp_lv_deltaLB": delta_lb, "tbp_lv_deltaLBnorm": delta_lb * rng.uniform(0.6, 0.97, n),
        "tbp_lv_color_std_mean": colour_std, "tbp_lv_radial_color_std_max": radial,
        "tbp_lv_norm_color": norm_colour, "tbp_lv_stdL": std_l,
        "tbp_lv_stdLExt": pat["skin_stdL"][pid] * np.exp(rng.normal(0.0, 0.25, n)),
        "tbp_lv_nevi_confidence": _percent_sigmoid(nevi_logit),
        "tbp_lv_dnn_lesion_confidence": _percent_sigmoid(dnn_logit),
    }


def _diagnosis_columns(rng: np.random.Generator, target: np.ndarray,
                       sev: np.ndarray) -> dict[str, np.ndarray]:
    """lesion_id, the iddx chain and the melanoma-only columns (label-derived, train only)."""
    n, mal = len(target), np.flatnonzero(target)
    k = len(mal)
    p_benign_id = max(0.0, (_LESION_ID_SHARE * n - k) / max(1, n - k))
    has_id = target | (rng.random(n) < p_benign_id)
    lesion_id = np.full(n, None, dtype=object)
    ids = _format_ids("IL_", _unique_ints(rng, int(has_id.sum()), 0, 10_000_000), 7)
    lesion_id[has_id] = rng.permutation(ids)

    kinds = list(MALIGNANT_KINDS)
    kind = _draw_codes(rng, np.array([MALIGNANT_KINDS[c][0] for c in kinds], dtype=float), k)
    depth_of = np.array([len(MALIGNANT_KINDS[c][1]) for c in kinds])
    depth = np.where((depth_of[kind] >= 4) & (rng.random(k) < 0.35), 3, depth_of[kind])
    mel = kinds.index("mel")
    if k:  # the first malignant row is a melanoma with a fifth level: no text column is all-null
        kind[0], depth[0] = mel, depth_of[mel]
    chains = [MALIGNANT_KINDS[c][1] for c in kinds]
    levels = {f"iddx_{i}": np.full(n, None, dtype=object) for i in range(1, 6)}
    levels["iddx_1"][:] = "Benign"
    for i in range(1, 6):  # five vocabulary look-ups, not a loop over rows
        table = np.array([[ch[i - 1] if i <= min(d, len(ch)) else None for d in range(6)]
                          for ch in chains], dtype=object)
        levels[f"iddx_{i}"][mal] = table[kind, depth]
    full_table = np.array([["::".join(ch[:d]) for d in range(6)] for ch in chains], dtype=object)
    iddx_full = np.full(n, "Benign", dtype=object)
    iddx_full[mal] = full_table[kind, depth]
    if k:
        first = mal[0]
        deepest = levels[f"iddx_{depth_of[mel]}"][first]
        levels["iddx_5"][first] = f"{deepest}, other"
        iddx_full[first] = f"{iddx_full[first]}::{levels['iddx_5'][first]}"

    is_mel = np.zeros(n, dtype=bool)
    is_mel[mal[kind == mel]] = True
    thick = np.round(np.exp(rng.normal(math.log(0.55), 0.6, n) + 0.8 * sev).clip(0.1, 12.0), 2)
    with_thick = is_mel & (rng.random(n) < 0.75)
    with_mitotic = is_mel & (rng.random(n) < 0.65)
    if k:
        with_thick[mal[0]] = with_mitotic[mal[0]] = True
    mitotic_code = np.floor(1.5 * thick + rng.normal(0.0, 1.0, n)).clip(0, len(_MITOTIC) - 1).astype(int)
    mitotic = np.where(with_mitotic, _MITOTIC[mitotic_code], None).astype(object)
    return {"lesion_id": lesion_id, "iddx_full": iddx_full, **levels,
            "mel_mitotic_index": mitotic, "mel_thick_mm": np.where(with_thick, thick, np.nan)}


def _draw_codes(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    """Categorical draws (indices into `weights`) by inverse CDF."""
    cdf = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(weights) - 1)


def _unique_ints(rng: np.random.Generator, k: int, lo: int, hi: int) -> np.ndarray:
    """k distinct ascending integers in [lo, hi): one random pick in each of k equal strata."""
    step = (hi - lo) // max(k, 1)
    if step < 1:
        raise ValueError(f"cannot draw {k} distinct integers from [{lo}, {hi})")
    return lo + np.arange(k, dtype=np.int64) * step + rng.integers(0, step, k)


def _format_ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded ids such as ISIC_0015670, built as bytes without a per-row Python loop."""
    digits = (numbers[:, None] // 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)) % 10
    buf = np.empty((len(numbers), len(prefix) + width), dtype=np.uint8)
    buf[:, : len(prefix)] = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    buf[:, len(prefix):] = digits + ord("0")
    return buf.view(f"S{buf.shape[1]}").ravel().astype(f"U{buf.shape[1]}").astype(object)


def _percent_sigmoid(logit: np.ndarray) -> np.ndarray:
    return 100.0 / (1.0 + np.exp(-np.clip(logit, -700.0, 700.0)))


def _assemble(cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """Order the columns as in the file and give each its schema dtype (text stays object)."""
    missing, extra = set(ISIC2024_COLUMNS) - set(cols), set(cols) - set(ISIC2024_COLUMNS)
    assert not missing and not extra, f"schema mismatch: missing {missing}, extra {extra}"
    return pd.DataFrame({c: pd.Series(cols[c], dtype=object if t == "object" else t, copy=False)
                         for c, t in ISIC2024_COLUMNS.items()})
