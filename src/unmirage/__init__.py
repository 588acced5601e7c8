"""unmirage: machine unlearning for safe vision-language models, and the attacks that expose the safety mirage.

The main steps as functions (each documented; a worked example in docs/api.md):
`save_tiny_model`, `load_model`, `check_data`, `mine_harmful`, `build_unlearn`, `unlearn` (a recipe file or
dict), `evaluate` (the four-case protocol) and `build_report`.
"""

from unmirage.api import (
    build_report,
    build_unlearn,
    check_data,
    evaluate,
    load_model,
    mine_harmful,
    save_tiny_model,
    unlearn,
)
from unmirage.errors import UnmirageError
from unmirage.version import __version__

__all__ = [
    "UnmirageError",
    "__version__",
    "build_report",
    "build_unlearn",
    "check_data",
    "evaluate",
    "load_model",
    "mine_harmful",
    "save_tiny_model",
    "unlearn",
]
