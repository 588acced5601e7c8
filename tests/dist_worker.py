"""Launcher for the multi-process tests: imports torch, transformers and unmirage once, then forks
`--nproc` ranks with the environment torchrun gives each (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT); each rank runs a recipe and dumps its trainable parameters. Forked ranks skip the ~20 s of
imports a fresh process pays; the training, the process group (gloo) and DeepSpeed are those of a torchrun
launch. Usage: python tests/dist_worker.py OUT_FILE_PREFIX MASTER_PORT override [override ...]"""

from __future__ import annotations

import os
import sys

import torch
import torch.multiprocessing as mp

from unmirage.models.families import unwrap
from unmirage.train import load_recipe, run_unlearning
from unmirage.train.run import set_threads_from_env

WORLD_SIZE = 2


def without_shared_memory_allreduce() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel (C++, minutes on a fresh
    machine) on first use; marking the op unavailable makes it use torch.distributed (gloo), as it does
    wherever the op cannot be built. Only the collectives' speed differs; the tests check values."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def rank_main(rank: int, prefix: str, port: str, overrides: list[str]) -> None:
    """One rank: torchrun's environment, then the recipe; writes `{prefix}{rank}.pt`."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        LOCAL_WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=port,
    )
    set_threads_from_env()
    recipe, config = load_recipe(None, overrides)
    result = run_unlearning(recipe, config)
    model = unwrap(result.trainer.model)
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save(
        {"params": params, "metrics": result.metrics, "reference": result.reference}, f"{prefix}{rank}.pt"
    )


def main() -> None:
    prefix, port, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    if any(o.startswith("train.deepspeed=") for o in overrides):
        without_shared_memory_allreduce()
    load_recipe(None, overrides)  # the training-argument fields are read (and their modules imported) once
    mp.start_processes(
        rank_main, args=(prefix, port, overrides), nprocs=WORLD_SIZE, join=True, start_method="fork"
    )


if __name__ == "__main__":
    main()
