"""The exception types lesion-ml raises on purpose, in one place: every message names the file,
row or key, the value found, what is allowed and the remedy in the caller's own interface."""
from __future__ import annotations


class ConfigError(ValueError):
    """params.yaml (or a config dict) does not validate; the message names each bad key."""


class DataError(ValueError):
    """The input data breaks the data contract; the message names file, row/key, value and fix."""


class BadImageError(ValueError):
    """An image is missing, unreadable or corrupt; the message names the image and its file.

    The remedy depends on who asked (a params key for the pipeline, a flag for `lesion predict`),
    so the layer that knows adds it: see `sources.check_images`, tasks/train_cnn.py and app/cli.py."""


class PretrainedWeightsMissing(FileNotFoundError):
    """pretrained: true, but the weight file is not on this machine (no download is attempted)."""


class DiskFullError(OSError):
    """The disk filled up while an output was written; the previous version of it is intact."""


class ServerError(RuntimeError):
    """The server or the deployment did not start or stop; the message says where the log is."""
