from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from unmirage.errors import UnmirageError
from unmirage.pipeline import load_plan, plan_steps, run_plan

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "smol-vlguard"


def _plan(tmp_path: Path, data: dict, overrides=()) -> object:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_plan(path, overrides)


def _base(tmp_path: Path, stages: list[dict]) -> dict:
    return {
        "output_dir": "{runs}",
        "vars": {"runs": str(tmp_path / "runs"), "n": 3},
        "variants": {"a": {"flags": ["--x", "1"], "m": "A"}, "b": {"flags": [], "m": "B"}},
        "stages": stages,
    }


def test_steps_render_splice_and_order(tmp_path):
    plan = _plan(
        tmp_path,
        _base(
            tmp_path,
            [
                {"name": "prep", "run": ["models", "tiny", "--out", "{runs}/p"]},
                {
                    "name": "one",
                    "per_variant": True,
                    "run": ["eval", "--model", "{m}", "{flags}", "-n", "{n}"],
                },
                {
                    "name": "two",
                    "per_variant": True,
                    "run": ["report", "{runs}/{variant}"],
                    "variants": ["b"],
                },
                {"name": "all", "all_variants": True, "run": ["report", "{runs}/a", "{runs}/b"]},
            ],
        ),
        ["vars.n=5"],
    )
    steps, out = plan_steps(plan)
    assert out == tmp_path / "runs"
    assert [s.label for s in steps] == ["prep", "one.a", "one.b", "two.b", "all"]
    assert steps[1].argv == ["eval", "--model", "A", "--x", "1", "-n", "5"]
    assert steps[2].argv == ["eval", "--model", "B", "-n", "5"]
    assert steps[3].argv == ["report", f"{tmp_path}/runs/b"]
    steps, _ = plan_steps(plan, variants=["b"])
    assert steps[-1].label == "all" and "variants a too" in steps[-1].skip_reason
    steps, _ = plan_steps(plan, variants=["b"], only=["one", "all"])
    assert [s.label for s in steps] == ["one.b", "all"] and not steps[1].skip_reason
    records = run_plan(plan, dry_run=True, echo=lambda _line: None)
    assert [r["status"] for r in records] == ["planned"] * 5


def test_default_variants_and_all(tmp_path):
    data = _base(
        tmp_path,
        [
            {"name": "one", "per_variant": True, "run": ["eval", "{m}"]},
            {"name": "both", "all_variants": True, "run": ["report", "{runs}/a", "{runs}/b"]},
            {"name": "only-b", "all_variants": True, "variants": ["b"], "run": ["report", "{runs}/b"]},
        ],
    )
    data["default_variants"] = ["b"]
    plan = _plan(tmp_path, data)
    steps, _ = plan_steps(plan)
    assert [(s.label, bool(s.skip_reason)) for s in steps] == [
        ("one.b", False),
        ("both", True),
        ("only-b", False),
    ]
    steps, _ = plan_steps(plan, variants=["all"])
    assert [(s.label, bool(s.skip_reason)) for s in steps] == [
        ("one.a", False),
        ("one.b", False),
        ("both", False),
        ("only-b", False),
    ]
    data["default_variants"] = ["c"]
    with pytest.raises(UnmirageError, match="no variant 'c'"):
        plan_steps(_plan(tmp_path, data))


@pytest.mark.parametrize(
    ("stages", "variables", "message"),
    [
        ([{"name": "s", "run": ["x", "{nope}"]}], {}, "unknown variable"),
        ([{"name": "s", "run": ["x", "{m}"]}], {}, "variant's variable"),
        ([{"name": "s", "per_variant": True, "run": ["x", "pre{flags}"]}], {}, "must stand alone"),
        (
            [{"name": "s", "run": ["x"]}],
            {"d": "$UNMIRAGE_TEST_UNSET_VAR/x"},
            "UNMIRAGE_TEST_UNSET_VAR is not set",
        ),
        ([{"name": "s", "run": ["x"]}], {"p": "{q}", "q": "{p}"}, "cycle"),
    ],
)
def test_plan_errors(tmp_path, stages, variables, message):
    data = _base(tmp_path, stages)
    data["vars"].update(variables)
    with pytest.raises(UnmirageError, match=message):
        plan_steps(_plan(tmp_path, data))


def test_plan_validation_errors(tmp_path):
    with pytest.raises(UnmirageError, match="duplicate stage names"):
        _plan(tmp_path, _base(tmp_path, [{"name": "s", "run": ["x"]}, {"name": "s", "run": ["y"]}]))
    with pytest.raises(UnmirageError, match="no stage named"):
        plan_steps(_plan(tmp_path, _base(tmp_path, [{"name": "s", "run": ["x"]}])), only=["t"])
    with pytest.raises(UnmirageError, match="no variant"):
        plan_steps(_plan(tmp_path, _base(tmp_path, [{"name": "s", "run": ["x"]}])), variants=["c"])


def test_run_times_skips_and_fails_clearly(tmp_path):
    stages = [
        {
            "name": "tiny",
            "run": ["models", "tiny", "--out", "{runs}/tiny"],
            "creates": "{runs}/tiny/config.json",
        },
        {"name": "bad", "run": ["pipeline", "run", "{runs}/missing.yaml"]},
    ]
    plan = _plan(tmp_path, _base(tmp_path, stages))
    lines: list[str] = []
    with pytest.raises(UnmirageError, match="stage bad failed with exit code 2.*recipe file not found"):
        run_plan(plan, echo=lines.append)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "stages.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["status"]) for r in rows] == [("tiny", "ok"), ("bad", "failed")]
    assert rows[0]["wall_s"] > 0 and rows[0]["peak_rss_gb"] > 0.05
    assert (tmp_path / "runs" / "tiny" / "config.json").is_file()
    assert "$ unmirage models tiny" in (tmp_path / "runs" / "logs" / "tiny.log").read_text()
    records = run_plan(plan, only=["tiny"], echo=lines.append)
    assert records[0]["status"] == "skipped"


def test_smol_vlguard_plan_renders(monkeypatch):
    monkeypatch.setenv("UNMIRAGE_VLGUARD_DIR", "/data/vlguard")
    plan = load_plan(RECIPES / "pipeline.yaml")
    # a plain run: the text form and the recipe that works (text-harmful); its combined reports are skipped
    default = plan_steps(plan)[0]
    assert {s.variant for s in default} == {None, "text", "text-harmful"}
    assert [s.label for s in default if s.skip_reason] == ["report-all", "report-experiments"]
    steps, out = plan_steps(plan, variants=["all"])
    labels = [s.label for s in steps]
    assert not any(s.skip_reason for s in steps)
    assert labels[:2] == ["convert", "compose"] and labels[-2:] == ["report-all", "report-experiments"]
    for variant in ("text", "vlm"):
        for stage in ("eval-base", "sft", "eval-sft", "npo", "eval-npo", "rmu", "eval-rmu", "triggers"):
            assert f"{stage}.{variant}" in labels
    # the composed VLM's LM is the same SmolLM2: its harmful answers are mined once, in the text form
    assert "mine.text" in labels and "unlearn-data.text" in labels and "mine.vlm" not in labels
    forget = {
        s.variant: next(a for a in s.argv if a.startswith("data.forget=")) for s in steps if s.stage == "npo"
    }
    assert forget["text"] == forget["vlm"]
    vlm_evals = [s for s in steps if s.variant == "vlm" and s.argv[0] in ("eval", "analyze", "data")]
    assert all("--placeholder-images" in s.argv for s in vlm_evals if s.stage != "unlearn-data")
    assert not any("--placeholder-images" in s.argv for s in steps if s.variant == "text")
    evals = [s for s in steps if s.argv[0] == "eval"]
    protocol = [s for s in evals if s.stage not in ("eval-bench-base", "eval-bench-sft")]
    assert len(protocol) == 30 and all(
        "/data/vlguard/test.json" in s.argv and "--prefill" in s.argv for s in protocol
    )
    # the harmful-as-text forget set: mined and built from the unsafe instructions on safe images, evaluated on
    # the protocol and on vlguard-text, with the base and SFT models on vlguard-text alone
    harmful = {s.stage: s for s in steps if s.variant == "text-harmful"}
    assert set(harmful) == {
        "mine-text-harmful",
        "unlearn-data-text-harmful",
        "rmu",
        "eval-rmu",
        "eval-bench-base",
        "eval-bench-sft",
        "report",
    }
    assert harmful["mine-text-harmful"].argv[4:6] == ["--subset", "safe_unsafes"]
    assert harmful["unlearn-data-text-harmful"].argv[4:6] == ["--forget-subset", "safe_unsafes"]
    for stage in ("eval-rmu", "eval-bench-base", "eval-bench-sft"):
        argv = harmful[stage].argv
        assert argv[argv.index("--benchmark") + 1] == "vlguard-text"
        assert ("--prefill" in argv) == (stage == "eval-rmu")
    l15 = {s.stage: s for s in steps if s.variant == "text-harmful-l15"}
    assert {"data.max_length=192", "method.layer=15", "method.steering_coeff=auto"} <= set(l15["rmu"].argv)
    assert "data.max_length=192" in harmful["rmu"].argv
    assert "runs/smol-vlguard/text-harmful/eval-sft" in l15["report"].argv
    # both kinds of harmful request in one forget set, each kind with its own mined answers
    union = {s.stage: s for s in steps if s.variant == "text-union"}["unlearn-data-union"].argv
    pairs = [(union[i + 1], union[i + 3]) for i, a in enumerate(union) if a == "--forget-subset"]
    assert pairs == [
        ("unsafes", "runs/smol-vlguard/data/text/harmful.json"),
        ("safe_unsafes", "runs/smol-vlguard/data/text-harmful/harmful.json"),
    ]
    # form-balanced unlearning: the text model on rewritten sets, compared with the text base and SFT
    balanced = {s.stage: s for s in steps if s.variant == "balanced"}
    assert set(balanced) == {"unlearn-data-balanced", "npo", "eval-npo", "rmu", "eval-rmu", "report"}
    build = balanced["unlearn-data-balanced"].argv
    assert [build[i + 1] for i, a in enumerate(build) if a == "--rewrite-word"] == ["What", "Share"]
    assert forget["balanced"] == "data.forget=runs/smol-vlguard/data/text/unlearn-balanced/forget.json"
    assert "runs/smol-vlguard/text/eval-base" in balanced["report"].argv
    assert "text form-balanced NPO" in balanced["eval-npo"].argv
    assert all("--auto-resume" in s.argv for s in steps if s.argv[0] == "unlearn")
    # experiment 5: RMU on the answer tokens of the forget dialogues (the later data.forget wins)
    answer = {s.stage: s for s in steps if s.variant == "answer-rmu"}
    assert set(answer) == {"unlearn-data", "rmu", "eval-rmu", "report"}
    rmu_argv = answer["rmu"].argv
    forgets = [a for a in rmu_argv if a.startswith("data.forget=")]
    assert forgets[-1] == "data.forget=runs/smol-vlguard/data/text/unlearn/forget.json"
    assert "method.mask=answer" in rmu_argv and "runs/smol-vlguard/text/eval-sft" in answer["report"].argv
    random_pick = {s.stage: s for s in steps if s.variant == "balanced-random"}
    assert set(random_pick) == {"unlearn-data-balanced", "rmu", "eval-rmu"}
    assert random_pick["unlearn-data-balanced"].argv[-3:-1] == ["random", "--out"]
    for step in steps:
        if step.argv[0] == "unlearn":
            assert Path(step.argv[1]).name and (RECIPES / Path(step.argv[1]).name).is_file()
    # stages of several variants may share an output (the mined answers, the text sets) only as one command
    by_output: dict[str, list[str]] = {}
    for step in steps:
        if step.creates:
            assert by_output.setdefault(step.creates, step.argv) == step.argv, step.label
    # every variant renders alone and brings the shared data stages it needs (the vlm form uses the text
    # form's mined sets, as asserted above)
    for variant in set(plan.variants) - {"vlm"}:
        alone = {s.stage: s for s in plan_steps(plan, variants=[variant])[0] if s.variant == variant}
        needs = [a.split("=", 1)[1] for s in alone.values() for a in s.argv if a.startswith("data.forget=")]
        made = {s.creates.rsplit("/", 1)[0] for s in alone.values() if s.stage.startswith("unlearn-data")}
        assert all(path.rsplit("/", 1)[0] in made for path in needs), variant


def test_smol_vlguard_plan_experiments(monkeypatch):
    """The experiment variants: hazard pictures with and without the image, mixed-form retain sets and RMU's
    alpha 1, form-balanced RMU at a deep layer with an automatic control norm, per-example NPO; the probe."""
    monkeypatch.setenv("UNMIRAGE_VLGUARD_DIR", "/data/vlguard")
    plan = load_plan(RECIPES / "pipeline.yaml")
    steps, _ = plan_steps(plan, variants=["all"])
    by = {(s.stage, s.variant): s for s in steps}
    hazard = "runs/smol-vlguard/data/hazard"
    assert by[("hazard-data", "hazard")].argv == [
        "data",
        "hazard-images",
        "--vlguard",
        "/data/vlguard",
        "--out",
        hazard,
    ]
    projector = by[("projector", "hazard")].argv
    assert (
        projector[1].endswith("projector_sft.yaml")
        and f"data.retain={hazard}/captions_train.json" in projector
    )
    labels = [s.label for s in steps]
    assert labels.index("hazard-captions-before.hazard") < labels.index("vision.hazard")
    assert labels.index("vision.hazard") < labels.index("projector.hazard")
    assert "model=runs/smol-vlguard/models/smollm2-vlm-vision" in projector
    assert labels.index("hazard-captions.hazard") < labels.index("eval-base.hazard")
    for stage in ("sft", "npo", "rmu"):  # trained on hazard pictures, from the projector-trained VLM
        argv = by[(stage, "hazard")].argv
        assert f"data.image_root={hazard}/images/train" in argv
        assert "model=runs/smol-vlguard/models/smollm2-vlm-hazard" in argv
        assert (stage, "hazard-grey") not in by  # hazard-grey trains nothing
    for stage, model in (("eval-sft", "sft/merged"), ("eval-npo", "npo/merged"), ("eval-rmu", "rmu")):
        with_image, grey = by[(stage, "hazard")].argv, by[(stage, "hazard-grey")].argv
        assert with_image[with_image.index("--model") + 1] == f"runs/smol-vlguard/hazard/{model}"
        assert grey[grey.index("--model") + 1] == f"runs/smol-vlguard/hazard/{model}"
        assert (
            with_image[-2:] == ["--image-root", f"{hazard}/images/test"]
            and grey[-1] == "--placeholder-images"
        )
        assert grey[grey.index("--out") + 1].startswith("runs/smol-vlguard/hazard-grey/")
    mixed = by[("unlearn-data-retain-mixed", "retain-mixed")].argv
    assert mixed[mixed.index("--rewrite-side") + 1] == "retain" and mixed.count("--rewrite-word") == 5
    assert (
        "method.alpha=1.0" in by[("rmu", "retain-mixed")].argv
        and "method.alpha=1.0" in by[("rmu", "alpha1")].argv
    )
    assert "method.alpha=1.0" not in by[("rmu", "text")].argv
    assert (
        "data.forget=runs/smol-vlguard/data/text/unlearn-retain-mixed/forget.json"
        in by[("npo", "retain-mixed")].argv
    )
    deep = by[("rmu", "balanced-deep")].argv
    assert {"method.layer=29", "method.steering_coeff=auto"} <= set(deep)
    assert "data.forget=runs/smol-vlguard/data/text/unlearn-balanced/forget_rmu.json" in deep
    assert ("npo", "balanced-deep") not in by
    mid = by[("rmu", "balanced-mid")].argv
    assert {"method.layer=23", "method.steering_coeff=auto"} <= set(mid) and "method.layer=29" not in mid
    assert "output_dir=runs/smol-vlguard/balanced-mid/rmu" in mid
    assert "method.alpha=100.0" in by[("rmu", "balanced-mid-a100")].argv and "method.alpha=100.0" not in mid
    paper = by[("npo", "npo-paper")].argv
    assert {"method.reduction=mean", "data.epoch_over=forget", "train.max_steps=-1"} <= set(paper)
    assert "data.forget=runs/smol-vlguard/data/text/unlearn-balanced/forget.json" in paper
    assert by[("report", "npo-paper")].argv[3:5] == ["runs/smol-vlguard/npo-paper/eval-npo", "--out"]
    requests = "data/labels/vlguard_test_requests.jsonl"
    for step in ("report", "report-experiments"):
        argv = by[(step, "npo-paper" if step == "report" else None)].argv
        assert (
            argv[-2:] == ["--request-labels", requests] and (Path(__file__).parents[1] / requests).is_file()
        )
    probe = by[("probe", "text")].argv
    assert (
        probe[:2] == ["analyze", "probe"]
        and probe[probe.index("--model") + 1] == "runs/smol-vlguard/models/smollm2"
    )
    assert probe[probe.index("--forget") + 1] == "runs/smol-vlguard/data/text/unlearn/forget.json"
    assert probe[probe.index("--what") + 1] == "/data/vlguard/test_what_3shot.json"
    assert labels.index("unlearn-data.text") < labels.index("probe.text")


@pytest.mark.slow
def in_process_child(argv: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float]:
    """`pipeline.run_child` without a new Python per stage (each would import torch and transformers again;
    `test_run_times_skips_and_fails_clearly` covers the real child processes): the command runs in this
    process with the stage's environment, its output in the log."""
    import contextlib
    import os
    import time

    import torch

    from unmirage.cli.main import main

    log.parent.mkdir(parents=True, exist_ok=True)
    start, saved, threads = time.perf_counter(), dict(os.environ), torch.get_num_threads()
    with open(log, "w", encoding="utf-8") as handle, contextlib.redirect_stdout(handle):
        handle.write("$ unmirage " + " ".join(argv) + "\n")
        os.environ.update(env)
        try:
            main(argv)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            os.environ.clear()
            os.environ.update(saved)
            torch.set_num_threads(threads)
    return code, time.perf_counter() - start, 0.0


def tiny_smol_plan(tmp_path: Path, monkeypatch, train_overrides: str, image_ext: str = "png"):
    """The real plan file on a tiny ChatML stand-in for the converted SmolLM2 (the convert stage counts as done)
    and a six-record VLGuard folder, run in process; returns (plan, runs folder)."""
    import unmirage.pipeline
    from helpers import safe_record, stand_in_smollm2, unsafe_record, write_json

    monkeypatch.setattr(unmirage.pipeline, "run_child", in_process_child)
    runs = tmp_path / "runs"
    model, tok = stand_in_smollm2()
    lm = runs / "models" / "smollm2"
    model.save_pretrained(lm)
    tok.save_pretrained(lm)
    (lm / "manifest.json").write_text("{}")
    vlguard = tmp_path / "vlguard"
    records = [safe_record(f"s{i}", f"a/{i}.png") for i in range(3)]
    records += [unsafe_record(f"u{i}", f"b/{i}.{image_ext}") for i in range(3)]
    for name in ("train.json", "test.json", "test_share_1shot.json"):
        write_json(vlguard / name, records)
    what = [unsafe_record("u0", f"b/0.{image_ext}", q=f"What {k}?") for k in range(3)]
    write_json(vlguard / "test_what_3shot.json", what)
    overrides = [
        f"vars.vlguard={vlguard}",
        f"vars.runs={runs}",
        f"vars.recipes={RECIPES}",
        "vars.subsample=2",
    ]
    overrides += ["vars.eval_tokens=4", "vars.batch_size=4", f"vars.unlearn_overrides=[{train_overrides}]"]
    return load_plan(RECIPES / "pipeline.yaml", overrides), runs


def test_smol_plan_sft_stages_on_a_tiny_stand_in(tmp_path, monkeypatch):
    """The real plan file, stages compose -> sft-data -> sft -> eval-sft, both forms, on a tiny ChatML LM."""
    pytest.importorskip("unmirage.train.recipe", reason="the unlearn command has not landed")
    from unmirage.models import load_model

    plan, runs = tiny_smol_plan(
        tmp_path,
        monkeypatch,
        "train.max_steps=2,train.per_device_train_batch_size=2,lora.r=4,data.max_length=96",
    )
    run_plan(
        plan,
        only=["convert", "compose", "sft-data", "sft", "eval-sft"],
        variants=["text", "vlm"],
        echo=lambda _line: None,
    )
    for variant, family in (("text", "causal"), ("vlm", "llava")):
        merged = load_model(runs / variant / "sft" / "merged")
        assert merged.family.name == family
        metrics = json.loads((runs / variant / "eval-sft" / "metrics.json").read_text())
        assert metrics["placeholder_images"] is (variant == "vlm")
        assert (
            metrics["asr_methods"] == ["keyword", "llm-topic"]
            and metrics["asr_prefill_n"] == metrics["asr_normal_n"] == 2
        )
        manifest = json.loads((runs / variant / "sft" / "manifest.json").read_text())
        assert manifest["global_step"] == 2
    rows = [json.loads(line) for line in (runs / "stages.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["compose", "sft-data", "sft", "eval-sft", "sft", "eval-sft"]
    assert all(r["status"] == "ok" and r["wall_s"] > 0 for r in rows)
    assert all(r["train_tokens_per_s"] > 0 for r in rows if r["stage"] == "sft")
    assert all(r["generation_tokens_per_s"] > 0 for r in rows if r["stage"] == "eval-sft")


def test_smol_plan_hazard_stages_on_a_tiny_stand_in(tmp_path, monkeypatch):
    """The real plan file, experiment 1's first stages on a tiny ChatML LM: hazard pictures, caption checks
    around projector pretraining (the LM frozen), and the base evaluations with and without the pictures."""
    plan, runs = tiny_smol_plan(
        tmp_path, monkeypatch, "train.max_steps=2,train.per_device_train_batch_size=2", image_ext="jpg"
    )
    plan.vars["vision_steps"] = 3
    stages = ["convert", "compose", "hazard-data", "hazard-captions-before", "vision", "projector"]
    stages += ["hazard-captions"]
    run_plan(plan, only=[*stages, "eval-base"], variants=["hazard", "hazard-grey"], echo=lambda _line: None)
    rows = [json.loads(line) for line in (runs / "stages.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [*stages[1:], "eval-base", "eval-base"]
    manifest = json.loads((runs / "models" / "smollm2-vlm-hazard" / "manifest.json").read_text())
    assert manifest["global_step"] == 2 and manifest["trainable_parameters"] > 0
    from safetensors.torch import load_file

    composed, vision, after = (
        load_file(runs / "models" / name / "model.safetensors")
        for name in ("smollm2-vlm", "smollm2-vlm-vision", "smollm2-vlm-hazard")
    )
    pretraining = json.loads((runs / "models" / "smollm2-vlm-vision" / "manifest.json").read_text())
    assert 0 <= pretraining["vision_pretraining"]["held_out_hazard_accuracy"] <= 1
    vision_changed = [k for k in composed if not torch.equal(composed[k], vision[k])]
    assert vision_changed and all("vision" in k for k in vision_changed), vision_changed
    changed = [k for k in vision if not torch.equal(vision[k], after[k])]
    assert changed and all("projector" in k for k in changed), changed
    assert any("language_model" in k for k in composed)  # ... which stays SmolLM2, weight for weight
    for folder in ("captions-before", "captions"):
        captions = json.loads((runs / "hazard" / folder / "hazard_captions.json").read_text())
        assert captions["all"]["n"] == 200 and captions["hazard"]["n"] == captions["benign"]["n"] == 100
    with_image = json.loads((runs / "hazard" / "eval-base" / "metrics.json").read_text())
    grey = json.loads((runs / "hazard-grey" / "eval-base" / "metrics.json").read_text())
    assert with_image["placeholder_images"] is False and grey["placeholder_images"] is True
    assert with_image["asr_normal_n"] == grey["asr_normal_n"] == 2


def test_a_stage_killed_part_way_runs_again(tmp_path):
    """A `creates` manifest still marked "running" (the claim of a killed run) does not mark the stage done."""
    from unmirage.outputs import owner_record

    stages = [
        {
            "name": "tiny",
            "run": ["models", "tiny", "--out", "{runs}/tiny"],
            "creates": "{runs}/tiny/manifest.json",
        }
    ]
    plan = _plan(tmp_path, _base(tmp_path, stages))
    claim = tmp_path / "runs" / "tiny" / "manifest.json"
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps(owner_record("models tiny", {"seed": 0})))
    lines: list[str] = []
    records = run_plan(plan, dry_run=True, echo=lines.append)
    assert records[0]["status"] == "planned", lines
    claim.write_text(json.dumps({**owner_record("models tiny", {"seed": 0}), "status": "done"}))
    assert run_plan(plan, dry_run=True, echo=lines.append)[0]["status"] == "skipped"
