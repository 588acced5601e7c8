"""unmirage.lab.parallel: jobs side by side in forked processes, and data-parallel base training that takes
the same steps as one process."""

from __future__ import annotations

import json
import os

import pytest
import torch

from unmirage.errors import UnmirageError
from unmirage.lab.parallel import all_sum, rank_and_size, run_jobs, run_ranks, share, sum_gradients


def _write(path, text):
    def job():
        path.write_text(f"{text} {os.getpid()}")

    return job


def test_jobs_run_in_their_own_processes_and_report_their_times(tmp_path):
    jobs = [(f"job {i}", _write(tmp_path / f"{i}.txt", i)) for i in range(3)]
    seconds = run_jobs(jobs, workers=2, progress=False, logs=tmp_path / "logs")
    assert list(seconds) == ["job 0", "job 1", "job 2"] and all(s >= 0 for s in seconds.values())
    pids = {int((tmp_path / f"{i}.txt").read_text().split()[1]) for i in range(3)}
    assert os.getpid() not in pids and len(pids) == 3
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["job-0.log", "job-1.log", "job-2.log"]


def test_one_worker_runs_the_jobs_here_in_order():
    done = []
    seconds = run_jobs([("a", lambda: done.append("a")), ("b", lambda: done.append("b"))], 1, progress=False)
    assert done == ["a", "b"] and list(seconds) == ["a", "b"]


def test_a_failing_job_is_an_error_naming_it_and_its_log(tmp_path):
    def boom():
        print("partial output")
        raise UnmirageError("no such file", file="x.json")

    jobs = [("fine", _write(tmp_path / "fine.txt", "ok")), ("train npo", boom)]
    with pytest.raises(UnmirageError, match=r"train npo failed: .*no such file.*train-npo\.log"):
        run_jobs(jobs, workers=2, progress=False, logs=tmp_path / "logs")
    assert "partial output" in (tmp_path / "logs" / "train-npo.log").read_text()


def _data_parallel_step(out):
    """One SGD step of a linear model on 6 examples, each rank on its share, gradients summed."""
    rank, size = rank_and_size()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.randn(6, 3)
    index = share(list(range(6)))
    loss = ((model(x[index]) - y[index]) ** 2).sum() / 6
    loss.backward()
    sum_gradients(list(model.parameters()))
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    total = all_sum(loss.detach().clone())
    torch.save(
        {"weight": model.weight.detach(), "loss": total, "size": size, "index": index}, out / f"{rank}.pt"
    )


def test_data_parallel_ranks_take_the_step_of_one_process_on_the_whole_batch(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    run_ranks(lambda: _data_parallel_step(tmp_path / "one"), 1)
    run_ranks(lambda: _data_parallel_step(tmp_path / "two"), 2)
    one = torch.load(tmp_path / "one" / "0.pt")
    ranks = [torch.load(tmp_path / "two" / f"{r}.pt") for r in range(2)]
    assert one["size"] == 1 and [r["size"] for r in ranks] == [2, 2]
    assert [r["index"] for r in ranks] == [[0, 2, 4], [1, 3, 5]]
    for r in ranks:
        torch.testing.assert_close(r["weight"], one["weight"], rtol=0, atol=1e-6)
        torch.testing.assert_close(r["loss"], one["loss"], rtol=0, atol=1e-6)


def test_a_failing_rank_is_an_error():
    def fail():
        if rank_and_size()[0] == 1:
            raise ValueError("rank one broke")

    with pytest.raises(UnmirageError, match="rank 1 failed: ValueError: rank one broke"):
        run_ranks(fail, 2)


def test_base_model_trained_on_two_ranks_matches_one_process(tmp_path):
    """The lab's vision pretraining and base training, data-parallel over 2 forked ranks, give the model and
    the training record one process gives (to float rounding)."""
    from safetensors.torch import load_file

    from unmirage.lab.config import LabConfig
    from unmirage.lab.pretrain import BaseStage, VisionStage
    from unmirage.lab.stages import build_base_model
    from unmirage.lab.world import World, WorldConfig

    config = LabConfig(
        world=WorldConfig(sft_size=40, general_size=20, test_safe=8, test_unsafe=8),
        vision=VisionStage(steps=3, pictures=96, batch_size=16),
        base=BaseStage(steps=3, examples=96, batch_size=16),
    )
    world = World(config.world)
    info = {}
    for ranks in (1, 2):
        info[ranks] = build_base_model(
            config, world, tmp_path / str(ranks), seed=0, progress=False, ranks=ranks
        )
    assert info[2]["ranks"] == 2 and info[1]["ranks"] == 1
    for stage, keys in (
        ("vision", ("loss", "kind_accuracy", "train_flop")),
        ("base", ("final_loss", "first_loss")),
    ):
        for key in keys:
            assert info[2][stage][key] == pytest.approx(info[1][stage][key], rel=1e-5), (stage, key)
    # each rank pads its share of a batch to its own longest question: no more padding than one process
    assert info[2]["base"]["tokens"] <= info[1]["base"]["tokens"]
    # AdamW moves every weight by up to about lr a step whatever its gradient's size, so rounding in a
    # gradient near zero shows as a weight difference of a fraction of lr; the ranks agree within a quarter
    # of one step's move. A key projection's bias has no gradient at all (softmax ignores a shift shared by
    # every key): its moves are rounding alone, so it is left out.
    one, two = (load_file(tmp_path / str(r) / "model.safetensors") for r in (1, 2))
    assert one.keys() == two.keys()
    for name in (n for n in one if not n.endswith("k_proj.bias")):
        stage = config.vision if name.startswith("vision_tower") else config.base
        difference = (two[name] - one[name]).abs().max().item()
        assert difference <= 0.25 * stage.learning_rate * stage.steps, (name, difference)
    assert json.loads((tmp_path / "2" / "lab_training.json").read_text())["sizes"] == info[1]["sizes"]


def test_default_workers_follow_cores_threads_and_the_system(monkeypatch):
    import unmirage.lab.parallel as parallel

    monkeypatch.setattr(parallel.sys, "platform", "linux")
    monkeypatch.setattr(parallel, "cpu_cores", lambda: 8)
    monkeypatch.setattr(parallel.torch, "get_num_threads", lambda: 8)
    assert parallel.default_workers() == 4 and parallel.default_workers(cap=2) == 2
    monkeypatch.setattr(parallel.torch, "get_num_threads", lambda: 1)  # OMP_NUM_THREADS=1
    assert parallel.default_workers() == 1
    monkeypatch.setattr(parallel.torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(parallel.sys, "platform", "darwin")
    assert parallel.default_workers() == 1
