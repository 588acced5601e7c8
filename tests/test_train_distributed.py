"""Two CPU processes: DDP keeps ranks identical and matches one process with the doubled batch; the ZeRO-3
frozen-reference copy goes through `deepspeed.initialize`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import free_port
from test_train import overrides, run, write_data

WORKER = Path(__file__).with_name("dist_worker.py")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def launch(tmp_path: Path, args: list[str], timeout: int = 400) -> None:
    """Two ranks (`dist_worker.py` forks them with torchrun's environment) running the recipe `args`."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, str(WORKER), str(tmp_path / "rank"), str(free_port()), *args]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path)


# per-example NPO terms (reduction sum, no batch-mean CE) so that 2 x 1 example == 1 x 2 examples;
# SGD because Adam would turn round-off-sized gradients into lr-sized steps
NPO = (
    "method.reduction=sum",
    "method.retain_ce_weight=0",
    "method.retain_npo_weight=1",
    "train.optim=sgd",
)


def npo_args(tmp_path, data, out, *extra):
    return overrides(tmp_path, data, "tiny-llava", "npo", out, 2, *NPO, *extra)


def test_ddp_ranks_agree_and_match_one_process(tmp_path, data):
    launch(
        tmp_path, npo_args(tmp_path, data, "ddp", "train.per_device_train_batch_size=1", "train.use_cpu=true")
    )
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["params"].keys() == rank1["params"].keys()
    for name, value in rank0["params"].items():
        torch.testing.assert_close(value, rank1["params"][name], rtol=0, atol=0, msg=name)
    single = run(tmp_path, data, "tiny-llava", "npo", "one", 2, *NPO)
    assert rank0["metrics"][0]["loss"] == pytest.approx(single.metrics[0]["loss"], rel=1e-5)
    # DDP averages the per-rank gradients: the same update as one process over both examples
    single_params = dict(single.trainer.model.named_parameters())
    for name, value in rank0["params"].items():
        torch.testing.assert_close(value, single_params[name].detach(), rtol=1e-4, atol=1e-6, msg=name)


def test_zero3_frozen_copy_reference(tmp_path, data):
    pytest.importorskip("deepspeed")
    config = tmp_path / "zero3.json"
    ds = json.loads((ROOT / "configs" / "deepspeed" / "zero3.json").read_text())
    config.write_text(json.dumps(ds))
    launch(
        tmp_path,
        npo_args(
            tmp_path,
            data,
            "z3",
            "train.per_device_train_batch_size=1",
            "train.use_cpu=true",
            f"train.deepspeed={config}",
            "reference=copy",
        ),
    )
    rank0 = torch.load(tmp_path / "rank0.pt")
    assert rank0["reference"] == "copy"
    first = rank0["metrics"][0]
    assert first["log_ratio_forget"] == pytest.approx(
        0.0, abs=1e-5
    )  # the sharded copy == the policy at step 0
    assert rank0["metrics"][-1]["log_ratio_forget"] != 0
    assert (tmp_path / "z3" / "model.safetensors").is_file()
