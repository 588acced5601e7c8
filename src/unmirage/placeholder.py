"""Grey placeholder images for text-only runs of a vision-language model: the stand-in itself and the size
a model's processor expects. A leaf module (it needs only `errors`), so models, data and generation can all
use it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unmirage.errors import UnmirageError

if TYPE_CHECKING:
    from PIL import Image
    from transformers import PreTrainedTokenizerBase, ProcessorMixin

PLACEHOLDER_GREY = (128, 128, 128)


def placeholder_image(size: int | tuple[int, int]) -> Image.Image:
    """A uniform grey RGB image; `size` is an int (square) or (width, height)."""
    from PIL import Image

    width, height = (size, size) if isinstance(size, int) else size
    if width < 1 or height < 1:
        raise UnmirageError(f"placeholder image size must be positive, got {width}x{height}")
    return Image.new("RGB", (width, height), PLACEHOLDER_GREY)


def _field(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def placeholder_size(processor: ProcessorMixin | PreTrainedTokenizerBase) -> tuple[int, int]:
    """(width, height) of the image a processor expects: its crop size, else its square size, else 336."""
    image_processor = getattr(processor, "image_processor", None)
    crop = getattr(image_processor, "crop_size", None)
    if crop is not None and _field(crop, "height"):
        return int(_field(crop, "width")), int(_field(crop, "height"))
    size = getattr(image_processor, "size", None)
    if size is not None and _field(size, "height"):
        return int(_field(size, "width")), int(_field(size, "height"))
    if size is not None and _field(size, "longest_edge") and getattr(image_processor, "merge_size", None):
        edge = int(_field(size, "shortest_edge") ** 0.5)  # Qwen2-VL: sizes are pixel counts
        return edge, edge
    if size is not None and _field(size, "shortest_edge"):
        edge = int(_field(size, "shortest_edge"))
        return edge, edge
    return 336, 336
