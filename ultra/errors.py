"""The errors that mean "the user gave something wrong": commands print their message, without a traceback.

Every error a user can cause is a :class:`UserError` defined here, below every stage, so that any stage can
raise it and any front end (a command, the demo page) can tell it from a bug. Anything else that escapes a
command is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UserError(ValueError):
    """Base of the errors caused by what the user gave: a setting, an argument, a file or an image."""


class ConfigError(UserError):
    """A setting or command-line argument is invalid, or settings do not fit each other or the data."""


class DataError(UserError):
    """A data file or folder is missing, unreadable or inconsistent; the message names it."""


class CacheError(DataError):
    """A feature cache file is missing, truncated or not what the cache's manifest says."""


class UnknownModelError(UserError):
    """The model name is neither a timm model nor an alias, or it is not a ViT with fused qkv."""


class WeightsError(UserError):
    """A weight source is unavailable or its tensors do not fit the model."""


class OfflineWeightsError(WeightsError):
    """The offline ONNX weight source is missing or does not have the expected structure."""


class CheckpointError(UserError):
    """An inference checkpoint is unreadable, of another format, or does not fit the backbone."""


class HeaderError(UserError):
    """Raised with the checkpoint's path and the field that is wrong (wrapped as a CheckpointError)."""


class MissingExtra(UserError, ImportError):
    """An optional part of ultra needs an extra that is not installed (``pip install 'ultra-seg[extra]'``)."""


class CRFUnavailable(MissingExtra):
    """The dense CRF needs the ``crf`` extra."""


class DemoUnavailable(MissingExtra):
    """The demo needs the ``demo`` extra (gradio)."""


class DiskFull(UserError):
    """The disk ran out of space (or quota) while ultra wrote to it: nothing half-written is left as if complete."""


class FolderInUse(UserError):
    """Another process is writing into the same run or output folder."""


USER_ERRORS = (UserError, FileExistsError, FileNotFoundError, PermissionError)
"""What a front end reports as a message: bad settings, arguments, files and images, missing weights or extras,
outputs that exist, inputs that do not, folders that cannot be written. Every other exception is a bug."""


@contextlib.contextmanager
def user_errors_unwrapped() -> Iterator[None]:
    """A user's mistake raised while a parser builds classes from settings (jsonargparse wraps it in its own
    ValueError, possibly through an argument link) is raised as itself, so a command reports it in one line."""
    try:
        yield
    except ValueError as err:
        cause = err
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is None or cause is err:
            raise
        raise cause from None
