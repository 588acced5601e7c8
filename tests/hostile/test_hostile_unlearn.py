"""Hostile cases for `unlearn`: settings that must fail before any compute (`--check` too), folders it did not
write, a changed recipe on --resume, a NaN loss, a half-written checkpoint, file permissions."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch
import yaml

from helpers import cli_status, run_cli
from hostile import assert_untouched, refused, run_killed, snapshot
from test_train import write_data


def recipe(tmp_path: Path, **changes) -> Path:
    """A 2-step NPO recipe on the tiny LLaVA with placeholder images; `changes` replace top-level keys."""
    forget, retain = write_data(tmp_path, n_forget=4, n_retain=4)
    data = {
        "model": "tiny-llava",
        "data": {"forget": str(forget), "retain": str(retain), "placeholder_images": True},
        "method": {"name": "npo", "beta": 0.5},
        "train": {
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "report_to": "none",
            "save_steps": 1,
        },
        "output_dir": str(tmp_path / "run"),
        "plot": False,
        **changes,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


CHECK_CASES = [
    ("train.learning_rate=abc", "train.learning_rate: must be a number"),
    ("train.learning_rate=-1", "train.learning_rate: must be > 0"),
    ("train.learning_rate=.nan", "train.learning_rate: must be a finite number"),
    ("train.learning_rate=.inf", "train.learning_rate: must be a finite number"),
    ("train.max_steps=-5", "train.max_steps: must be at least 1"),
    ("train.max_steps=0", "train.max_steps: must be at least 1"),
    ("train.max_steps=2.5", "train.max_steps: must be int"),
    ("train.per_device_train_batch_size=0", "train.per_device_train_batch_size: must be at least 1"),
    ("train.gradient_accumulation_steps=-1", "train.gradient_accumulation_steps: must be at least 1"),
    ("train.num_train_epochs=0", "train.num_train_epochs: must be > 0"),
    ("train.weight_decay=-0.1", "train.weight_decay: must be >= 0"),
    ("train.seed=x", "train.seed: must be int"),
    ("train.seed=-1", "train.seed: must be an integer in"),
    ("train.save_steps=-1", "train.save_steps: must be > 0"),
    ("train.logging_steps=0", "train.logging_steps: must be > 0"),
    ("train.bf16=yes please", "train.bf16: must be bool"),
    ("train.report_to=no_such_tracker", "train.report_to: 'no_such_tracker' is not installed"),
    ("output_dir=", "must name a folder (it is empty)"),
    ("method.beta=true", "method.beta: must be a float, not true"),
    ("data.retain=/no/such/retain.json", "data.retain: file not found"),
    ("data.forget=/no/such/forget.json", "data.forget: file not found"),
    ("data.placeholder_images=false", "data.image_root is required"),
    ("data.image_root=/no/such/images", "give either image_root or placeholder_images"),
]


@pytest.mark.refuse
@pytest.mark.parametrize(("override", "message"), CHECK_CASES, ids=[c[0] for c in CHECK_CASES])
@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_bad_settings_fail_before_any_compute(tmp_path, capsys, override, message, check) -> None:
    path = recipe(tmp_path)
    result = run_cli(["unlearn", str(path), override, *(["--check"] if check else [])], capsys)
    refused(result, message)
    assert not (tmp_path / "run").exists()  # no manifest, metrics or TensorBoard files


@pytest.mark.refuse
def test_wandb_not_installed_is_one_line(tmp_path, capsys) -> None:
    from transformers.integrations import get_available_reporting_integrations

    if "wandb" in get_available_reporting_integrations():
        pytest.skip("wandb is installed here")
    refused(run_cli(["unlearn", str(recipe(tmp_path)), "train.report_to=wandb", "--check"], capsys), "wandb")


@pytest.mark.refuse
def test_bf16_on_a_cpu_names_the_fix(tmp_path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    refused(
        run_cli(["unlearn", str(recipe(tmp_path)), "train.bf16=true", "--check"], capsys), "train.bf16=false"
    )


@pytest.mark.refuse
def test_duplicate_yaml_key_is_an_error(tmp_path, capsys) -> None:
    path = recipe(tmp_path)
    path.write_text(path.read_text() + "plot: true\n")
    refused(run_cli(["unlearn", str(path), "--check"], capsys), "duplicate key 'plot'")


@pytest.mark.refuse
def test_output_dir_that_is_a_file(tmp_path, capsys) -> None:
    path = recipe(tmp_path)
    (tmp_path / "run").write_text("not a folder")
    before = snapshot(tmp_path / "run")
    refused(run_cli(["unlearn", str(path), "--check"], capsys), "output_dir:", "is a file")
    refused(run_cli(["unlearn", str(path)], capsys), "is a file")
    assert_untouched(before)


@pytest.mark.refuse
def test_a_data_build_folder_is_not_trained_into(tmp_path, capsys) -> None:
    from unmirage.runs import write_manifest

    built = tmp_path / "run"
    built.mkdir()
    (built / "forget.json").write_text("[]")
    write_manifest(built, command="data build-unlearn")
    before = snapshot(built)
    refused(run_cli(["unlearn", str(recipe(tmp_path))], capsys), "unmirage data build-unlearn")
    refused(
        run_cli(["unlearn", str(recipe(tmp_path)), "--auto-resume"], capsys), "unmirage data build-unlearn"
    )
    assert_untouched(before)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A finished 2-step run (checkpoints at steps 1 and 2): (recipe, output_dir)."""
    tmp = tmp_path_factory.mktemp("finished")
    path = recipe(tmp)
    assert cli_status(["unlearn", str(path)]) == 0
    return path, tmp / "run"


@pytest.mark.refuse
@pytest.mark.parametrize("flags", [[], ["train.save_strategy=no"]], ids=["with-checkpoints", "without"])
def test_a_finished_run_is_not_overwritten(finished, capsys, flags) -> None:
    path, out = finished
    before = snapshot(out)
    refused(run_cli(["unlearn", str(path), *flags], capsys), "--overwrite")
    assert_untouched(before)


@pytest.mark.refuse
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("method.beta=0.9", "method.beta"),
        ("train.learning_rate=0.01", "train.learning_rate"),
        ("train.max_steps=3", "train.max_steps"),
        ("model=tiny-qwen2_5_vl", "model.name"),
    ],
)
def test_resume_with_a_changed_recipe_is_refused(finished, capsys, override, key) -> None:
    path, out = finished
    before = snapshot(out)
    for flag in ("--resume", "--auto-resume"):
        refused(run_cli(["unlearn", str(path), override, flag], capsys), key, "other settings")
    assert_untouched(before)


@pytest.mark.survive
def test_overwrite_replaces_a_finished_run(finished, tmp_path, capsys) -> None:
    import shutil

    path, out = finished
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    result = run_cli(["unlearn", str(path), f"output_dir={copy}", "method.beta=0.9", "--overwrite"], capsys)
    assert result.code == 0, result.err
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["identity"]["method"]["beta"] == 0.9 and manifest["config"]["method"]["beta"] == 0.9


@pytest.mark.survive
def test_outputs_have_normal_permissions(finished) -> None:
    from unmirage.runs import current_umask

    _path, out = finished
    mask = current_umask()
    for file in [*out.glob("*"), *out.glob("checkpoint-*/*")]:
        if file.is_file():
            assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~mask, file


@pytest.mark.survive
def test_half_written_checkpoint_falls_back_to_the_last_complete_one(finished, tmp_path) -> None:
    from safetensors.torch import load_file

    path, whole = finished
    out = tmp_path / "run"
    argv = ["unlearn", str(path), f"output_dir={out}"]
    # killed while saving checkpoint-2: weights and optimizer written, trainer_state.json not yet
    child = run_killed("transformers:Trainer._save_rng_state", 2, "before", argv, tmp_path)
    assert child.returncode == -9, child.stderr[-2000:]
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-2" / "trainer_state.json").exists()
    assert cli_status([*argv, "--auto-resume"]) == 0
    got, want = load_file(out / "model.safetensors"), load_file(whole / "model.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.refuse
def test_non_finite_loss_stops_and_keeps_only_finite_checkpoints(tmp_path, capsys) -> None:
    path = recipe(tmp_path)
    result = run_cli(["unlearn", str(path), "train.learning_rate=1e30", "train.max_steps=4"], capsys)
    refused(result, "the training loss is nan")
    out = tmp_path / "run"
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl"))
    from unmirage.train.run import finite_weights

    assert all(finite_weights(p) for p in out.glob("checkpoint-*"))
    assert not (out / "model.safetensors").exists()


@pytest.mark.refuse
def test_a_setting_found_after_the_model_loads_leaves_no_folder(tmp_path, capsys) -> None:
    path = recipe(tmp_path)
    result = run_cli(["unlearn", str(path), "trainable=['model\\.nothing\\..*']"], capsys)
    refused(result, "selects no parameter")
    assert not (tmp_path / "run").exists()


@pytest.mark.refuse
def test_check_applies_the_output_rules_without_writing(finished, capsys) -> None:
    path, out = finished
    before = snapshot(out)
    refused(run_cli(["unlearn", str(path), "--check"], capsys), "--overwrite")
    refused(run_cli(["unlearn", str(path), "method.beta=0.9", "--resume", "--check"], capsys), "method.beta")
    assert run_cli(["unlearn", str(path), "--resume", "--check"], capsys).code == 0
    assert run_cli(["unlearn", str(path), "method.beta=0.9", "--overwrite", "--check"], capsys).code == 0
    assert_untouched(before)
