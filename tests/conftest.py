"""Shared fixtures. Tests that need the real VLGuard text files find them through UNMIRAGE_VLGUARD_DIR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # pytest-xdist runs one worker per core


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `slow` run first (each keeps its order): with `-n 2` the longest ones start at once and
    the short ones fill the other worker, instead of a long test starting late and running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def vlguard_dir() -> Path:
    """The folder with the real VLGuard train.json/test.json and the two attack files, or a skip."""
    value = os.environ.get("UNMIRAGE_VLGUARD_DIR")
    if not value:
        pytest.skip(
            "UNMIRAGE_VLGUARD_DIR is not set (the Makefile sets it when ../shared/data/vlguard exists)"
        )
    path = Path(value)
    if not (path / "train.json").is_file():
        pytest.skip(f"UNMIRAGE_VLGUARD_DIR={path} has no train.json")
    return path


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny LLaVA (`unmirage models tiny --family llava`) saved once per test process, for tests
    that only read a model folder (do not write into it)."""
    from unmirage.models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("session-models") / "tiny-llava", "llava")
