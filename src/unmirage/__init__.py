"""unmirage: machine unlearning for safe vision-language models, and the attacks that expose the safety mirage."""

from unmirage.errors import UnmirageError

__version__ = "0.1.0"
__all__ = ["UnmirageError", "__version__"]
