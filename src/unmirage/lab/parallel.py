"""Both cores at work: the lab's independent jobs in forked processes side by side, and data-parallel training
over forked ranks.

A tiny model's training step barely uses a second thread (one step of the lab's base training takes 0.83x the
time with two threads as with one: small kernels and Python-side collation), so two processes of one thread
each do nearly twice the work of one process of two. Children are forked, not spawned, so they start with the
imports the parent already paid for (a fresh process spends about 11 s importing torch and transformers), and
each runs one thread: the GNU OpenMP runtime of PyTorch's CPU wheels hangs in a forked process at its first
multi-threaded region once the parent has run one.

- `run_jobs` runs independent callables (the lab's four trainings after the base model, its evaluations), at
  most `workers` at a time; with one worker they run here, in order.
- `run_ranks` runs one callable on `ranks` forked processes joined in a gloo process group (torch.distributed),
  which `all_sum` and `share` use: a data-parallel loop gives each rank its `share` of every batch and sums
  the gradients, so every rank takes the same optimizer step as one process on the whole batch would.

A job's result is what it writes to disk; an exception in a child ends the others and is raised here as an
`UnmirageError` naming the job.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from pathlib import Path

import torch

from unmirage.errors import UnmirageError


def cpu_cores() -> int:
    """Cores this process may run on (its affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers(cap: int = 4) -> int:
    """Processes the lab runs side by side by default: one per core and per torch thread this process may
    use (OMP_NUM_THREADS=1 means one), at most `cap`; one outside Linux, where forking a process that has
    loaded system frameworks is unsafe (macOS) or impossible (Windows)."""
    if not sys.platform.startswith("linux"):
        return 1
    return max(1, min(cpu_cores(), torch.get_num_threads(), cap))


def _child(target: Callable[[], None], conn: multiprocessing.connection.Connection, log: Path | None) -> None:
    # One thread, whatever the environment said: GNU OpenMP (PyTorch's CPU wheels) hangs in a forked process
    # at its first parallel region with more than one thread once the parent has run one.
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    torch.set_num_threads(1)
    if log is not None:  # side-by-side jobs would garble one terminal's progress bars: each gets a file
        sys.stdout.flush()
        sys.stderr.flush()
        handle = open(log, "w", encoding="utf-8")  # noqa: SIM115 (the process's output until it ends)
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    try:
        target()
    except BaseException as exc:  # reported to the parent, which raises it with the job's name
        conn.send(str(exc) if isinstance(exc, UnmirageError) else f"{type(exc).__name__}: {exc}")
        conn.close()
        raise SystemExit(1) from None
    conn.send(None)
    conn.close()


class _Forked:
    """One forked child running `target` on one thread."""

    def __init__(self, name: str, target: Callable[[], None], log: Path | None = None) -> None:
        self.name = name
        self.log = log
        self.start = time.perf_counter()
        receive, send = multiprocessing.Pipe(duplex=False)
        self.receive = receive
        self.process = multiprocessing.get_context("fork").Process(
            target=_child, args=(target, send, log), name=f"unmirage-{name}", daemon=True
        )
        self.process.start()
        send.close()

    def finish(self) -> float:
        """Seconds it ran, once it has ended; `UnmirageError` naming it (and its log) if it failed."""
        self.process.join()
        message = self.receive.recv() if self.receive.poll() else "ended without a result"
        self.receive.close()
        if message is None and self.process.exitcode != 0:
            message = f"exited with status {self.process.exitcode}"
        if message is not None:
            where = f" (its output: {self.log})" if self.log is not None else ""
            raise UnmirageError(f"{self.name} failed: {message}{where}")
        return round(time.perf_counter() - self.start, 2)


def _stop(children: Sequence[_Forked]) -> None:
    for child in children:
        if child.process.is_alive():
            child.process.terminate()
        child.process.join()


def run_jobs(
    jobs: Sequence[tuple[str, Callable[[], None]]],
    workers: int,
    *,
    progress: bool = True,
    desc: str = "jobs",
    logs: Path | None = None,
) -> dict[str, float]:
    """Run every `(name, callable)` with at most `workers` forked children at a time, each on one thread and
    with its output in `logs/<name>.log` (one worker: in this process, in order,
    output as usual). Returns each job's wall seconds in the order they were given. The first job to fail
    ends the others and raises `UnmirageError`."""
    from tqdm.auto import tqdm

    workers = max(1, min(workers, len(jobs)))
    seconds: dict[str, float] = {}
    if workers == 1:
        for name, job in jobs:
            start = time.perf_counter()
            job()
            seconds[name] = round(time.perf_counter() - start, 2)
        return seconds
    pending = list(jobs)
    running: list[_Forked] = []
    bar = tqdm(total=len(jobs), desc=f"{desc} ({workers} processes)", disable=not progress, leave=False)
    try:
        while pending or running:
            while pending and len(running) < workers:
                name, job = pending.pop(0)
                log = None
                if logs is not None:
                    logs.mkdir(parents=True, exist_ok=True)
                    log = logs / (re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") + ".log")
                running.append(_Forked(name, job, log))
            wait([child.process.sentinel for child in running])
            for child in [c for c in running if not c.process.is_alive()]:
                running.remove(child)
                took = seconds[child.name] = child.finish()
                bar.set_postfix_str(f"{child.name} {took:.0f} s")
                bar.update()
    finally:
        _stop(running)
        bar.close()
    return {name: seconds[name] for name, _ in jobs}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ranks(target: Callable[[], None], ranks: int) -> None:
    """Run `target` on `ranks` forked processes in one gloo process group (ranks 0..ranks-1, each on one
    thread); `ranks` 1 runs it here, with no process group."""
    if ranks <= 1:
        target()
        return
    port = str(_free_port())

    def rank_main(rank: int) -> None:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=ranks)
        try:
            target()
        finally:
            dist.destroy_process_group()

    children = [_Forked(f"rank {r}", lambda r=r: rank_main(r)) for r in range(ranks)]
    try:
        for child in children:
            child.finish()
    finally:
        _stop(children)


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the group's size ((0, 1) outside `run_ranks`)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share(index: Sequence[int]) -> list[int]:
    """This rank's part of a batch of example indices (every `size`-th one from its rank on)."""
    rank, size = rank_and_size()
    return list(index[rank::size])


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks, in place (unchanged outside `run_ranks`)."""
    import torch.distributed as dist

    if rank_and_size()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Each parameter's gradient summed over the ranks (one all-reduce of a flat buffer)."""
    if rank_and_size()[1] == 1:
        return
    for p in params:  # a parameter this rank's examples did not reach still takes part
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = all_sum(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
