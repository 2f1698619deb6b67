"""Errors a user can cause. Each message says what is wrong and what to do about it.

The CLI prints the message of any `Error` and exits with status 2, without a traceback
(`--debug` shows it). Anything else that escapes is a bug in cnnlab.
"""

from __future__ import annotations

import unicodedata


class Error(Exception):
    """Base class of every error cnnlab raises on purpose."""


class DataError(Error):
    """A dataset is missing, malformed or cannot be read."""


class ImageError(DataError):
    """An image file cannot be decoded (corrupt, truncated, not an image, too large)."""


class ModelError(Error):
    """A model reference is unknown, or the model cannot take the input it is given."""


class TrainingError(Error):
    """Training cannot go on (for example the loss became NaN)."""


class RunError(Error):
    """A run folder is missing, incomplete or was written by an incompatible version."""


class UsageError(Error):
    """Arguments that do not fit together."""


class ExportError(Error):
    """A model cannot be exported, or the exported file does not compute what PyTorch computes."""


class Interrupted(TrainingError):
    """Training was stopped by the user (Ctrl-C); the completed epochs are saved."""


class ArchitectureError(ModelError):
    """A layer cannot take the shape it is given; the message names the layer, the formula and a fix."""


class WeightsError(ModelError):
    """Weights that cannot be had or do not fit the network: the message says which keys and what to do."""


class ArchitectureWarning(UserWarning):
    """A layer works but probably not as meant (a stride larger than its window skips input pixels)."""


def printable(text: object) -> str:
    """Text that prints and encodes as UTF-8 everywhere: a file name's bytes that are not UTF-8 (Linux keeps
    them as lone surrogates) and control characters other than newline and tab each become U+FFFD."""
    return "".join("\ufffd" if unicodedata.category(ch) in ("Cs", "Cc") and ch not in "\n\t" else ch
                   for ch in str(text))
