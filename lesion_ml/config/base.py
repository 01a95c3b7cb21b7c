"""The base of every params.yaml section, and the check of names that become file names.

Unknown keys are errors (``extra="forbid"``) so that a typo in params.yaml fails loudly instead of
being silently ignored.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def file_names(v: dict[str, Any], what: str, folder: str) -> dict[str, Any]:
    """The keys of a named collection whose names become file names."""
    import re

    bad = [k for k in v if not re.fullmatch(r"[A-Za-z0-9_.-]+", k)]
    if bad:
        raise ValueError(f"{what} names {bad} may only use letters, digits, '_', '.' and '-' (they name files "
                         f"in {folder})")
    return v
