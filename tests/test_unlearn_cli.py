"""`unmirage unlearn RECIPE.yaml [key=value ...]`: outputs of a run, one-line errors, shipped recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import cli_status
from test_train import write_data
from unmirage.config import load_config
from unmirage.runs import read_jsonl
from unmirage.train import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_unlearn_command_writes_model_curves_and_manifest(tmp_path, capsys):
    forget, retain = write_data(tmp_path)
    recipe = tmp_path / "rmu.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": "tiny-llava",
                "data": {"forget": str(forget), "retain": str(retain), "placeholder_images": True},
                "method": {"name": "rmu", "layer": 1, "steering_coeff": 5.0, "alpha": 1.0, "mask": "text"},
                "train": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3},
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    assert cli_status(["unlearn", str(recipe), "train.save_steps=1"]) == 0
    out = tmp_path / "run"
    assert "rmu: 2 steps" in capsys.readouterr().out
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert {"loss", "forget_loss", "retain_loss", "ce_retain"} <= set(rows[0])
    assert rows[0]["loss"] == pytest.approx(
        rows[0]["forget_loss"] + rows[0]["retain_loss"] + rows[0]["ce_retain"]
    )
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "loss_terms.png").read_bytes()[:4] == b"\x89PNG"
    assert list(out.glob("tensorboard/events.out.tfevents.*")) and not (out / "runs").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "unlearn" and manifest["method"] == "rmu"
    assert manifest["reference"] == "swap" and manifest["placeholder_images"] is True
    assert manifest["config"]["method"]["mask"] == "text"
    assert str(forget) in manifest["inputs"]
    assert manifest["train_tokens"] > 0 and manifest["train_tokens_per_s"] > 0


def test_unlearn_errors_are_one_line(tmp_path, capsys):
    forget, retain = write_data(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: tiny-llava\ndata: {{forget: {forget}, retain: {retain}}}\nmethod: {{name: npo}}\noutput_dir: x\n"
    )
    for extra, message in [
        (["method.beta=-2"], "method.beta: must be a finite number > 0"),
        (["method.name=dpo"], "unknown method 'dpo'"),
        (["train.lr=1"], "train.lr: not a transformers.TrainingArguments field"),
        (["bogus=1"], "bogus: unknown key"),
        (["--resume", "--auto-resume"], "give --resume or --auto-resume, not both"),
        # found before training starts (and before output_dir is claimed), not at the batch that holds it
        (
            ["data.placeholder_images=true", "data.max_length=8"],
            "forget prompts are longer than max_length 8",
        ),
    ]:
        assert cli_status(["unlearn", str(recipe), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert (
        cli_status(["unlearn", str(recipe), "--check", "method.beta=0.9", "data.placeholder_images=true"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["method"]["beta"] == 0.9
    assert not (tmp_path / "x").exists()


PAPER_RECIPES = sorted((ROOT / "recipes").glob("*-7b/*.yaml"))
OTHER_RECIPES = sorted(
    p for p in (ROOT / "recipes").glob("*/*.yaml") if p not in PAPER_RECIPES and p.name != "pipeline.yaml"
)


@pytest.mark.parametrize("path", OTHER_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_other_recipes_validate(path):
    recipe, _ = load_recipe(path, ["train.use_cpu=true"])
    assert recipe.output_dir


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recipes_validate(path):
    recipe, config = load_recipe(path, ["train.use_cpu=true"])  # bf16 needs a GPU otherwise
    assert recipe.train["gradient_accumulation_steps"] * recipe.train["per_device_train_batch_size"] == 8
    if config.name == "npo":
        assert (config.beta, config.retain_npo_weight, config.retain_ce_weight) == (0.9, 1.0, 1.0)
    if config.name == "rmu":
        assert (config.layer, config.steering_coeff, config.alpha, config.layers_to_train()) == (
            7,
            10.0,
            1.0,
            (5, 6, 7),
        )


RESOLVED_BEFORE_PRESETS = Path(__file__).parent / "fixtures" / "recipes_7b_resolved.json"


def test_shipped_recipes_resolve_as_before_presets():
    """The 7B recipes, once 12 full files, now thin recipes over presets: each resolves to exactly the
    validated Recipe its full file gave (the fixture holds those, dumped before the presets)."""
    before = json.loads(RESOLVED_BEFORE_PRESETS.read_text())
    assert sorted(before) == sorted(str(p.relative_to(ROOT)) for p in PAPER_RECIPES)
    for path in PAPER_RECIPES:
        assert load_config(Recipe, path).model_dump(mode="json") == before[str(path.relative_to(ROOT))], path
