from __future__ import annotations

import pytest

from unmirage.config import StrictModel, apply_overrides, load_config, parse_override
from unmirage.errors import UnmirageError


class Inner(StrictModel):
    beta: float = 0.1
    name: str = "npo"


class Recipe(StrictModel):
    model: str
    method: Inner = Inner()
    epochs: int = 1


def test_overrides_parse_types():
    assert parse_override("method.beta=0.9") == (["method", "beta"], 0.9)
    assert parse_override("train.learning_rate=5e-7") == (["train", "learning_rate"], 5e-7)
    assert parse_override("flag=true") == (["flag"], True)
    assert parse_override("layers=[5,6,7]") == (["layers"], [5, 6, 7])
    with pytest.raises(UnmirageError, match="key.sub=value"):
        parse_override("novalue")


def test_apply_overrides_nested_and_copy():
    data = {"method": {"beta": 0.1}}
    out = apply_overrides(data, ["method.beta=2", "method.extra.deep=x"])
    assert out == {"method": {"beta": 2, "extra": {"deep": "x"}}}
    assert data == {"method": {"beta": 0.1}}
    with pytest.raises(UnmirageError, match="not a table"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_load_config_yaml_and_errors(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: tiny-llava\nmethod:\n  beta: 0.5\n")
    cfg = load_config(Recipe, path, ["epochs=3"])
    assert cfg.method.beta == 0.5 and cfg.epochs == 3

    path.write_text("model: x\nmethod:\n  betta: 0.5\n")
    with pytest.raises(UnmirageError) as err:
        load_config(Recipe, path)
    assert str(err.value) == f"{path}: method.betta: unknown key"

    path.write_text("model: x\nmethod:\n  beta: abc\n")
    with pytest.raises(UnmirageError, match=r"method\.beta: .*'abc'"):
        load_config(Recipe, path)

    path.write_text("method: {}\n")
    with pytest.raises(UnmirageError, match="model: required key is missing"):
        load_config(Recipe, path)

    path.write_text("model: [unclosed\n")
    with pytest.raises(UnmirageError, match="not valid YAML"):
        load_config(Recipe, path)
    with pytest.raises(UnmirageError, match="not found"):
        load_config(Recipe, tmp_path / "missing.yaml")
