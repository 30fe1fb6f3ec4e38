"""The one error type a user can cause.

Anything raised as `DmdrError` reaches the user as a single red line and exit code 2 (see cli.py);
every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class DmdrError(Exception):
    """A problem with the user's input: what is wrong and how to fix it, in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RecipeError(DmdrError):
    """A recipe that does not parse or validate: names the key path, the value and what was expected."""


class ModelLoadError(DmdrError):
    """A model folder or file that is missing or of the wrong family."""
