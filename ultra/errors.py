"""The errors that mean "the user gave something wrong": commands print their message, without a traceback.

Anything else that escapes a command is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """Base of the errors caused by what the user gave: a setting, an argument, a file or an image."""


class ConfigError(UserError):
    """A setting or command-line argument is invalid, or settings do not fit each other or the data."""
