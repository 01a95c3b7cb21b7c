"""Which task failures Prefect retries: transient I/O errors only.

A flaky network share, a busy or locked file, an interrupted read: these pass, so a task that
hit one is run again (it rewrites its outputs atomically, and training resumes from its last
checkpoint). Bad data, bad params, missing files, missing permissions and a full disk do not
pass by waiting; they fail at once with their message.
"""
from __future__ import annotations

from typing import Any

from lesion_ml.io import TRANSIENT_ERRNOS


def is_transient(exc: BaseException | None) -> bool:
    """True for an OSError whose errno says that trying again may succeed."""
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def retry_transient_io(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry when the task failed with a transient OSError."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return is_transient(exc)


# Passed to every @task of tasks/: up to 2 retries, after 2 s and 10 s.
IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": retry_transient_io}
