"""Unlearning training: one `transformers.Trainer` subclass for every registered method.

`load_recipe(path, overrides)` validates a recipe; `run_unlearning(recipe, config)` trains it.
"""

from __future__ import annotations

from unmirage.train.recipe import Recipe, load_recipe
from unmirage.train.run import RunResult, run_unlearning

__all__ = ["Recipe", "RunResult", "load_recipe", "run_unlearning"]
