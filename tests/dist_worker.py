"""Worker for the multi-process tests (launched by torchrun): run a recipe, dump this rank's trainable
parameters. Usage: python tests/dist_worker.py OUT_FILE_PREFIX override [override ...]"""

from __future__ import annotations

import os
import sys

import torch

from unmirage.models.families import unwrap
from unmirage.train import load_recipe, run_unlearning
from unmirage.train.run import set_threads_from_env


def without_shared_memory_allreduce() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel (C++, minutes on a fresh
    machine) on first use; marking the op unavailable makes it use torch.distributed (gloo), as it does
    wherever the op cannot be built. Only the collectives' speed differs; the tests check values."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def main() -> None:
    prefix, overrides = sys.argv[1], sys.argv[2:]
    set_threads_from_env()
    if any(o.startswith("train.deepspeed=") for o in overrides):
        without_shared_memory_allreduce()
    recipe, config = load_recipe(None, overrides)
    result = run_unlearning(recipe, config)
    rank = int(os.environ.get("RANK", "0"))
    model = unwrap(result.trainer.model)
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save(
        {"params": params, "metrics": result.metrics, "reference": result.reference}, f"{prefix}{rank}.pt"
    )


if __name__ == "__main__":
    main()
