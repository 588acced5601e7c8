"""Image paths stay under the image root; missing, empty, corrupt and huge images are one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import assert_one_line_error, png, run_cli, safe_record, unsafe_record, write_json
from unmirage.data.images import ImageLoader, parse_size, resolve_image_path
from unmirage.errors import UnmirageError
from unmirage.placeholder import placeholder_image


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "images"
    png(base / "ok" / "a.png")
    png(base / "ok" / "rgba.png", mode="RGBA", color=(1, 2, 3, 4))
    (base / "ok" / "empty.png").write_bytes(b"")
    (base / "ok" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (base / "ok" / "text.png").write_text("not an image")
    png(tmp_path / "outside" / "secret.png")
    os.symlink(tmp_path / "outside" / "secret.png", base / "ok" / "link_out.png")
    os.symlink(tmp_path / "outside", base / "dir_out")
    os.symlink(base / "ok" / "a.png", base / "ok" / "link_in.png")
    return base


def test_loads_rgb_images(root: Path) -> None:
    loader = ImageLoader(root=root)
    img = loader("ok/a.png", "r1")
    assert img.mode == "RGB" and img.size == (8, 6) and img.getpixel((0, 0)) == (200, 10, 10)
    assert loader("ok/rgba.png", "r2").mode == "RGB"
    assert loader("ok/link_in.png", "r3").size == (8, 6)
    assert loader.provenance() == {"image_root": str(root), "placeholder_images": None}


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        ("/etc/passwd", "is absolute"),
        ("C:\\x.png", "is absolute"),
        ("ok/../../outside/secret.png", "contains '..'"),
        ("..\\outside\\secret.png", "contains '..'"),
        ("ok/link_out.png", "resolves outside the image root"),
        ("dir_out/secret.png", "resolves outside the image root"),
        ("ok/missing.png", "image not found"),
        ("ok", "not a regular file"),
        ("", "image path is empty"),
    ],
)
def test_path_errors_name_record_and_path(root: Path, image: str, needle: str) -> None:
    with pytest.raises(UnmirageError) as err:
        resolve_image_path(root, image, "rec-7")
    message = str(err.value)
    assert needle in message and "record id rec-7" in message and "\n" not in message


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        ("ok/empty.png", "image file is empty"),
        ("ok/corrupt.png", "corrupt or unreadable"),
        ("ok/text.png", "corrupt or unreadable"),
    ],
)
def test_bad_image_files(root: Path, image: str, needle: str) -> None:
    with pytest.raises(UnmirageError, match=needle) as err:
        ImageLoader(root=root)(image, "rec-9")
    assert "record id rec-9" in str(err.value) and image.split("/")[-1] in str(err.value)


def test_absurdly_large_images(root: Path) -> None:
    with pytest.raises(UnmirageError, match=r"image is 8x6 pixels \(limit 40 pixels\)"):
        ImageLoader(root=root, max_pixels=40)("ok/a.png", "r")
    with pytest.raises(UnmirageError, match="image file is too large"):
        ImageLoader(root=root, max_bytes=10)("ok/a.png", "r")


def test_without_a_root_paths_are_taken_as_given(root: Path) -> None:
    loader = ImageLoader()
    assert loader(str(root / "ok" / "rgba.png"), "r").mode == "RGB"
    assert loader(None, "r") is None
    assert loader(placeholder_image((3, 2)), "r").size == (3, 2)
    with pytest.raises(UnmirageError, match=r"record id r: image not found"):
        loader(root / "ok" / "missing.png", "r")
    with pytest.raises(UnmirageError, match="corrupt or unreadable"):
        loader(root / "ok" / "corrupt.png", "r")
    with pytest.raises(UnmirageError, match="path or a PIL image"):
        loader(3, "r")
    assert loader.verify([("a", str(root / "ok" / "a.png"))]) == 1
    assert loader.provenance() == {"image_root": None, "placeholder_images": None}


def test_placeholder_is_opt_in(tmp_path: Path) -> None:
    assert ImageLoader()(None) is None  # no image, no stand-in unless asked for
    with pytest.raises(UnmirageError, match="not both"):
        ImageLoader(root=tmp_path, placeholder=(2, 2))
    with pytest.raises(UnmirageError, match="not a folder"):
        ImageLoader(root=tmp_path / "nowhere")
    loader = ImageLoader(placeholder=parse_size("12x7"))
    img = loader("does/not/exist.png", "r")
    assert img.size == (12, 7) and img.mode == "RGB" and img.getpixel((3, 3)) == (128, 128, 128)
    assert loader.provenance() == {"image_root": None, "placeholder_images": [12, 7]}
    assert placeholder_image(5).size == (5, 5)
    assert parse_size("336") == (336, 336)
    with pytest.raises(UnmirageError, match="must look like"):
        parse_size("big")


def test_verify_checks_every_image_once(root: Path) -> None:
    loader = ImageLoader(root=root)
    assert loader.verify([("a", "ok/a.png"), ("b", "ok/a.png"), ("c", "ok/rgba.png")]) == 2
    with pytest.raises(UnmirageError, match=r"record id d: image is corrupt"):
        loader.verify([("a", "ok/a.png"), ("d", "ok/corrupt.png")])


def test_cli_check_with_image_root(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_json(
        tmp_path / "good.json", [safe_record("s1", "ok/a.png"), unsafe_record("u1", "ok/rgba.png")]
    )
    code, out, _ = run_cli(["data", "check", str(good), "--image-root", str(root)], capsys)
    assert code == 0 and "2 distinct files" in out
    bad = write_json(
        tmp_path / "bad.json", [safe_record("s1", "ok/a.png"), unsafe_record("u1", "ok/missing.png")]
    )
    code, _, err = run_cli(["data", "check", str(bad), "--image-root", str(root)], capsys)
    assert_one_line_error(code, err, "record id u1", "image not found", "missing.png")
