"""The lm-evaluation-harness bridge: offline tasks over local files, a tiny LLaVA (hf-multimodal) and a tiny
causal LM (hf), scores filed into an eval run's metrics.json and shown by the report."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from helpers import assert_help_lists_settings
from unmirage.errors import UnmirageError
from unmirage.lmeval import LmEvalSettings, harness_model_type, run_lm_eval, scores
from unmirage.metrics import METRICS_SCHEMA

VQA_TASK = """task: tiny_vqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "<image>{{{{question}}}}"
doc_to_image: !function images.load
doc_to_target: answer
generation_kwargs:
  max_gen_toks: 3
  until: ["\\n"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
MC_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("lmeval")
    (root / "tasks").mkdir()
    with open(root / "vqa.jsonl", "w") as handle:
        for i in range(3):
            Image.new("RGB", (32, 32), (60 * i, 80, 160)).save(root / f"{i}.png")
            handle.write(
                json.dumps({"question": "What colour?", "image": str(root / f"{i}.png"), "answer": "red"})
                + "\n"
            )
    with open(root / "mc.jsonl", "w") as handle:
        for i in range(4):
            handle.write(
                json.dumps({"question": f"{i} + 1?", "choices": ["one", "two", "three"], "answer": i % 3})
                + "\n"
            )
    (root / "tasks" / "tiny_vqa.yaml").write_text(VQA_TASK.format(data=root / "vqa.jsonl"))
    (root / "tasks" / "tiny_mc.yaml").write_text(MC_TASK.format(data=root / "mc.jsonl"))
    (root / "tasks" / "images.py").write_text(
        "from PIL import Image\n\n\ndef load(doc):\n    return [Image.open(doc['image']).convert('RGB')]\n"
    )
    return root


def test_scores_by_hand():
    results = {
        "mmmu": {"alias": "mmmu", "acc,none": 0.25, "acc_stderr,none": 0.01, "sample_len": 8},
        "gsm": {"exact_match,strict-match": 0.5, "exact_match,flexible-extract": 0.75, "name": "gsm"},
    }
    assert scores(results) == {
        "mmmu": {"acc": 0.25, "acc_stderr": 0.01, "sample_len": 8.0},
        "gsm": {"exact_match (strict-match)": 0.5, "exact_match (flexible-extract)": 0.75},
    }


def test_multimodal_and_causal_models_through_the_harness(tasks, tmp_path, tiny_llava_dir):
    from helpers import stand_in_smollm2
    from unmirage.report import build_report

    vlm = tiny_llava_dir
    lm = tmp_path / "lm"
    model, tok = stand_in_smollm2()
    model.save_pretrained(lm)
    tok.save_pretrained(lm)
    assert harness_model_type(str(vlm)) == "hf-multimodal" and harness_model_type(str(lm)) == "hf"

    run = tmp_path / "run"  # an `unmirage eval` folder: the scores join its metrics.json
    run.mkdir()
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "schema": METRICS_SCHEMA,
                "label": "tiny",
                "rr_normal": 0.5,
                "rr_normal_k": 1,
                "rr_normal_n": 2,
                "rr_normal_ci": [0.0, 1.0],
            }
        )
    )
    settings = LmEvalSettings(
        model=str(vlm),
        tasks=["tiny_vqa"],
        include_path=tasks / "tasks",
        dtype="float32",
        device="cpu",
        batch_size=2,
    )
    found = run_lm_eval(settings, run)
    assert 0.0 <= found["tiny_vqa"]["exact_match"] <= 1.0
    record = json.loads((run / "lm_eval.json").read_text())
    assert record["settings"]["tasks"] == ["tiny_vqa"] and record["settings"]["batch_size"] == 2
    assert record["model_type"] == "hf-multimodal" and record["results"]["tiny_vqa"]["sample_len"] == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["utility"]["lm_eval"]["tiny_vqa"]["exact_match"] == found["tiny_vqa"]["exact_match"]

    found = run_lm_eval(
        settings.model_copy(update={"model": str(lm), "tasks": ["tiny_mc"]}), tmp_path / "lm-run"
    )
    assert found["tiny_mc"]["acc"] in (0.0, 0.25, 0.5, 0.75, 1.0)

    build_report([run], tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Utility (lm-evaluation-harness)" in report and "tiny_vqa exact_match" in report


def test_bad_requests(tasks, tmp_path):
    with pytest.raises(UnmirageError, match="unknown lm-eval task"):
        run_lm_eval(
            LmEvalSettings(model="tiny-llava", tasks=["no_such_task_here"], include_path=tasks / "tasks"),
            tmp_path,
        )
    with pytest.raises(UnmirageError, match="task folder not found"):
        run_lm_eval(
            LmEvalSettings(model="tiny-llava", tasks=["x"], include_path=tmp_path / "missing"), tmp_path
        )
    with pytest.raises(UnmirageError, match="unknown lm-eval model type"):
        harness_model_type("m", "vllm")


def test_settings_and_help(capsys, monkeypatch):
    assert_help_lists_settings(["utility", "lm-eval"], LmEvalSettings, capsys, monkeypatch)
    with pytest.raises(ValidationError, match="tasks"):
        LmEvalSettings(model="m", tasks=[])
