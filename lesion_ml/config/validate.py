"""The validate section: labelled sets from elsewhere scored by the exported model (stage
`validate@<name>`, flow flows/validate.py, one per set), and the section's old name `external`.
"""
from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field, field_validator

from lesion_ml.artefacts import EXTERNAL
from lesion_ml.config.base import file_names, Section
from lesion_ml.config.data import FolderFormat
from lesion_ml.errors import ConfigError

#: Sections renamed in this release, old name -> new name. A params file with the old name (and
#: not the new one) is read as the new one, with a FutureWarning; the old names go in the next
#: release.
RENAMED_SECTIONS = {"external": "validate"}


class ExternalSetConfig(Section):
    """A labelled image set from elsewhere (another clinic, camera or collection), scored by
    models/final in stage `validate@<name>`; never trained on."""

    images: str = Field(description="a folder of images (searched recursively) or an ISIC 2024 HDF5 file")
    labels: str = Field(description="labels CSV: generic, HAM10000, ISIC 2019 or ISIC 2020 (as data.folder)")
    metadata: str | None = Field(None, description="metadata CSV for models that use it (null: the labels CSV)")
    format: FolderFormat = Field("auto", description="the labels CSV format; auto: detected from its columns")
    ignore_unlabelled: bool = Field(False, description="score only the labelled images under `images`")


class ValidateConfig(Section):
    """External validation sets (params section `validate`; stage `validate@<name>`, one per set):
    metrics in reports/external/<name>.json."""

    sets: dict[str, ExternalSetConfig] = Field(default_factory=dict, description="name -> external set; "
                                               "none by default")
    tta: bool = Field(False, description="average the 8 flips/quarter turns of each image")
    bootstrap: int = Field(1000, ge=0, description="resamples for the 95% intervals")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the sets are scored; auto: CUDA "
                                                   "when present, else the CPU")

    @field_validator("sets")
    @classmethod
    def _names(cls, v: dict[str, ExternalSetConfig]) -> dict[str, ExternalSetConfig]:
        return file_names(v, "set", f"{EXTERNAL.as_posix()}/")


def renamed_sections(raw: dict[str, Any], where: str = "params.yaml") -> dict[str, Any]:
    """`raw` (a params mapping) with each section of RENAMED_SECTIONS under its new name; `raw` is
    not modified. A section found under its old name is moved, with a FutureWarning naming both.

    Raises:
        ConfigError: `raw` has a section under both its old and its new name (naming both and `where`).
    """
    if not isinstance(raw, dict):  # not a params mapping: validation says so
        return raw
    out = dict(raw)
    for old, new in RENAMED_SECTIONS.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{where}: has both section `{old}` (its old name) and `{new}`; `{old}` is now "
                              f"`{new}`: move what `{old}` holds into `{new}` and delete `{old}`")
        warnings.warn(f"params.yaml section `{old}` is now `{new}`; rename it in {where} (the old name is read "
                      "for this release only)", FutureWarning, stacklevel=3)
        out = {(new if k == old else k): v for k, v in out.items()}
    return out
