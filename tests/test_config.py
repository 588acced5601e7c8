from __future__ import annotations

import pytest

from unmirage.config import (
    StrictModel,
    apply_overrides,
    deep_merge,
    load_config,
    parse_override,
    read_composed,
)
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


def test_defaults_compose_in_order_deep_merged(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "base.yaml").write_text(
        "model: base\nmethod:\n  beta: 0.1\n  name: npo\nepochs: 2\n"
    )
    (tmp_path / "presets" / "method.yaml").write_text("defaults: [base.yaml]\nmethod:\n  beta: 0.7\n")
    (tmp_path / "presets" / "model.yaml").write_text("model: tiny-llava\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("defaults:\n  - presets/method.yaml\n  - presets/model.yaml\nmethod:\n  name: rmu\n")
    # base (nested default) < method.yaml < model.yaml < the recipe's own keys; tables merge key by key
    assert read_composed(recipe) == {
        "model": "tiny-llava",
        "method": {"beta": 0.7, "name": "rmu"},
        "epochs": 2,
    }
    cfg = load_config(Recipe, recipe, ["method.beta=0.9"])
    assert cfg == Recipe(model="tiny-llava", method=Inner(beta=0.9, name="rmu"), epochs=2)

    # a later list replaces an earlier one (lists are values, not tables)
    assert deep_merge({"a": [1, 2], "t": {"x": 1}}, {"a": [3], "t": {"y": 2}}) == {
        "a": [3],
        "t": {"x": 1, "y": 2},
    }


def test_defaults_errors_name_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("defaults: [nowhere.yaml]\nmodel: x\n")
    with pytest.raises(UnmirageError) as err:
        load_config(Recipe, recipe)
    assert str(err.value).startswith(f"{recipe}: defaults: file not found: nowhere.yaml")

    (tmp_path / "a.yaml").write_text("defaults: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\n")
    recipe.write_text("defaults: [a.yaml]\nmodel: x\n")
    with pytest.raises(UnmirageError) as err:
        load_config(Recipe, recipe)
    assert (
        str(err.value)
        == f"{tmp_path / 'b.yaml'}: defaults: a.yaml includes itself (r.yaml -> a.yaml -> b.yaml -> a.yaml)"
    )

    recipe.write_text("defaults: [r.yaml]\n")
    with pytest.raises(
        UnmirageError, match=r"r\.yaml: defaults: r\.yaml includes itself \(r\.yaml -> r\.yaml\)"
    ):
        load_config(Recipe, recipe)

    recipe.write_text("defaults: {model: x}\n")
    with pytest.raises(UnmirageError, match="defaults: must be a list of YAML file paths"):
        load_config(Recipe, recipe)
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    recipe.write_text("defaults: [bad.yaml]\n")
    with pytest.raises(UnmirageError, match=r"bad\.yaml: not valid YAML"):
        load_config(Recipe, recipe)
