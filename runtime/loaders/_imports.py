"""Importing heavy libraries without their import-time warning noise."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType


def quiet_import(name: str) -> ModuleType:
    """Import ``name``, ignoring warnings raised while it imports.

    mlflow (and what it imports) warns at import time about its own type hints and dependencies'
    deprecations; that is not the model's or the operator's concern, and must not fail processes that
    turn warnings into errors.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(name)
