"""User-facing errors: each one is printed by the CLI as one line, exit code 2; warnings,
printed as one line each, for what does not stop the work."""

from __future__ import annotations

import warnings


class GazeNLQError(Exception):
    """Bad user input (file, array, argument); the message names it and what was expected."""


class StoreError(GazeNLQError):
    """A feature store is missing, incomplete, corrupted or of the wrong shape / schema."""


class AnnotationError(GazeNLQError):
    """An annotation or prediction file does not follow the Ego4D NLQ schema."""


class MissingDependencyError(GazeNLQError):
    """An optional dependency is not installed; the message names the extra to install."""


class ParameterError(GazeNLQError):
    """A library argument is out of range. ``param`` names the parameter (the CLI shows the
    matching option instead); the message says what was expected."""

    def __init__(self, param: str, value: object, expected: str) -> None:
        self.param, self.value, self.expected = param, value, expected
        super().__init__(f"{param}={value!r}: {expected}")


class GazeNLQWarning(UserWarning):
    """Something the user should know that does not stop the work (a damaged cache repaired,
    a read-only store searched without writing its index); the CLI prints it as one line."""


def warn(message: str) -> None:
    """One warning line (the CLI prints ``warning: message`` on stderr)."""
    warnings.warn(" ".join(message.split()), GazeNLQWarning, stacklevel=3)
