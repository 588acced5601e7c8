"""Images: paths resolved under an image root (no escapes), checked, and loaded as PIL RGB images.

Every problem is a one-line `UnmirageError` naming the record id and the image path: a path that is
absolute, contains `..` or resolves (through a symlink) outside the root; a missing, empty, corrupt or
absurdly large file. The opt-in placeholder mode returns a grey image of a fixed size without touching the
disk, for text-only experiments; outputs made that way record it (see `ImageLoader.provenance`).

`ImageLoader` is the one image loader of the project: the data commands, training collation
(`data.collate.Collator`) and generation (`generate.BatchedGenerator`) all take an `image_loader`
(`LoadImage`: `(image, record_id) -> PIL image or None`) and default to `ImageLoader()`, which opens paths as
given; pass `ImageLoader(root=DIR)` for data whose image paths are relative to an image root.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, cast

from unmirage.errors import UnmirageError
from unmirage.placeholder import placeholder_image

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest accepted width x height (VLGuard images are below 20 megapixels)."""
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
"""Largest accepted file size."""

LoadImage = Callable[[Any, "str | None"], "Image.Image | None"]
"""An image loader: (image reference, record id) -> PIL RGB image, or None for an item without an image."""


def _label(record_id: str | None) -> str | None:
    return f"id {record_id}" if record_id is not None else None


def resolve_image_path(
    root: str | os.PathLike, image: str, record_id: str | None = None, *, file: object = None
) -> Path:
    """The file of `image` (a path relative to `root`), refusing paths that escape the root or are missing.

    Errors name the record id (and `file`, the data file the record comes from, when given).
    """
    root = Path(root)
    where = {"file": file, "record": _label(record_id)}
    if not image or not image.strip():
        raise UnmirageError("image path is empty", field="image", **where)
    posix, windows = PurePosixPath(image), PureWindowsPath(image)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or image.startswith(("/", "\\")):
        raise UnmirageError(
            f"image path {image!r} is absolute; it must be relative to the image root", **where
        )
    if ".." in re.split(r"[\\/]", image):
        raise UnmirageError(f"image path {image!r} contains '..' and would escape the image root", **where)
    if not root.is_dir():
        raise UnmirageError(f"image root {str(root)!r} is not a folder", **where)
    candidate = root / posix
    if not os.path.lexists(candidate):
        raise UnmirageError(f"image not found: {str(candidate)!r}", **where)
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise UnmirageError(f"image path {str(candidate)!r} is a broken or looping link", **where) from None
    if not resolved.is_relative_to(root.resolve()):
        raise UnmirageError(
            f"image path {str(candidate)!r} resolves outside the image root (to {str(resolved)!r})", **where
        )
    if not resolved.is_file():
        raise UnmirageError(f"image path {str(candidate)!r} is not a regular file", **where)
    return candidate


def check_image_file(
    path: Path,
    record_id: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    decode: bool = True,
) -> Image.Image | None:
    """Open an image and check it: not empty, not too large, readable.

    With `decode` the pixels are loaded and returned as RGB; without, the whole file is still decoded (JPEGs
    at a reduced scale, which reads every byte) so that a truncated or corrupt file fails here, and None is
    returned.
    """
    from PIL import Image

    label = _label(record_id)
    size = path.stat().st_size
    if size == 0:
        raise UnmirageError(f"image file is empty: {str(path)!r}", record=label)
    if size > max_bytes:
        raise UnmirageError(
            f"image file is too large ({size} bytes > {max_bytes}): {str(path)!r}", record=label
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width < 1 or height < 1 or width * height > max_pixels:
                    raise UnmirageError(
                        f"image is {width}x{height} pixels (limit {max_pixels} pixels): {str(path)!r}",
                        record=label,
                    )
                if not decode:
                    if img.format == "JPEG":
                        img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                    img.load()
                    return None
                img.load()
                return img.convert("RGB")
    except UnmirageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnmirageError(
            f"image is absurdly large (decompression bomb guard): {str(path)!r}", record=label
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UnmirageError(
            f"image is corrupt or unreadable ({reason}): {str(path)!r}", record=label
        ) from None


_VERIFIED: dict[tuple[str, int, int, int], None] = {}
"""Images already fully checked in this process, by (path, size, mtime, pixel limit)."""


def verify_image(
    path: str | os.PathLike,
    record_id: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    file: object = None,
) -> None:
    """Check an image file completely (size, pixel limit, full decode), once per process and file version.

    Errors name the image file and the record (and `file`, the data file the record comes from).
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise UnmirageError(
            f"cannot read image {str(path)!r} ({err.strerror})", record=_label(record_id)
        ) from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, max_pixels)
    if key in _VERIFIED:
        return
    try:
        check_image_file(path, record_id, max_pixels=max_pixels, max_bytes=max_bytes, decode=False)
    except UnmirageError as err:
        raise UnmirageError(str(err), file=file) if file is not None else err from None
    _VERIFIED[key] = None


def parse_size(text: str) -> tuple[int, int]:
    """'336' -> (336, 336); '640x480' -> (640, 480); anything else is a one-line error."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match:
        raise UnmirageError(f"image size {text!r} must look like 336 or 640x480")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if width < 1 or height < 1:
        raise UnmirageError(f"image size {text!r} must be positive")
    return width, height


@dataclass(frozen=True)
class ImageLoader:
    """Loads the images of records: `loader(image, record_id)` -> PIL RGB image (None when `image` is None).

    Three modes:

    * `root` set: `image` is a path relative to the root, resolved and checked (`resolve_image_path`);
    * `placeholder` set, a (width, height): every image is a grey stand-in (explicit opt-in for text-only
      runs; nothing is read from disk);
    * neither (the default of collation and generation): `image` is a path as given (absolute, or relative
      to the working folder), checked the same way except for the root.

    In every mode a PIL image passes through (converted to RGB) and the file checks (empty, too large,
    corrupt) apply.
    """

    root: Path | None = None
    placeholder: tuple[int, int] | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.root is not None and self.placeholder is not None:
            raise UnmirageError("give either an image root or placeholder images, not both")
        if self.root is not None:
            object.__setattr__(self, "root", Path(self.root))
            if not Path(self.root).is_dir():
                raise UnmirageError(f"image root {str(self.root)!r} is not a folder")

    def path(self, image: str | os.PathLike, record_id: str | None = None) -> Path:
        """The checked file path of `image` (error in placeholder mode, where there are no files)."""
        if self.placeholder is not None:
            raise UnmirageError("placeholder images have no files", record=_label(record_id))
        if self.root is not None:
            return resolve_image_path(self.root, str(image), record_id)
        path = Path(image)
        if not path.is_file():
            problem = "is not a regular file" if path.exists() else "not found"
            raise UnmirageError(f"image {problem}: {str(path)!r}", record=_label(record_id))
        return path

    def __call__(self, image: Any, record_id: str | None = None) -> Image.Image | None:
        if self.placeholder is not None:
            return placeholder_image(self.placeholder)
        if image is None:
            return None
        if not isinstance(image, str | os.PathLike):
            from PIL import Image as PILImage

            if isinstance(image, PILImage.Image):
                return image if image.mode == "RGB" else image.convert("RGB")
            raise UnmirageError(
                f"an image must be a path or a PIL image, got {type(image).__name__}",
                record=_label(record_id),
            )
        path = self.path(image, record_id)
        img = check_image_file(path, record_id, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        return cast("Image.Image", img)

    def verify(self, items: Iterable[tuple[str, str]], *, progress: bool = False) -> int:
        """Check every (record_id, image) up front: path, size, pixel limit and a full decode (`verify_image`,
        cached per file).

        Returns the number of distinct images checked; the first problem is a one-line error.
        """
        if self.placeholder is not None:
            return 0
        seen: set[str] = set()
        todo = [(rid, img) for rid, img in items if not (img in seen or seen.add(img))]
        if progress:
            from tqdm import tqdm

            todo = tqdm(todo, desc="checking images", unit="img")
        for rid, image in todo:
            verify_image(self.path(image, rid), rid, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        return len(seen)

    def provenance(self) -> dict[str, Any]:
        """What a manifest records about the images of a run."""
        return {
            "image_root": str(self.root) if self.root is not None else None,
            "placeholder_images": list(self.placeholder) if self.placeholder is not None else None,
        }
