"""MirageLab base training, one step at a time: what the LM head on the answer tokens only saves, measured
side by side (the variants' steps interleaved, so they share the machine's load).

Builds the default lab's tiny LLaVA and world, then times optimizer steps (collation included) of two
variants on the same batches: the model's own loss (`model(**batch).loss`, logits at every position) and
`unmirage.lab.pretrain.answer_loss` (the same value, the LM head at the labelled positions only: the lab's
loop). Prints, for each, ms per step, padded tokens per example, counted GFLOP per step, GFLOP/s reached and
its share of the machine's fp32 matmul speed (MFU), and the ratios to the first variant.

`python bench/lab_base_step.py [--steps 24] [--threads N]`
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from _common import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="timed steps per variant (after 2 warm-up)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from unmirage.data.collate import Collator
    from unmirage.data.conversations import Example as TrainExample
    from unmirage.lab.config import LabConfig
    from unmirage.lab.pretrain import _batches, answer_loss, step_flop
    from unmirage.lab.world import World
    from unmirage.machine import matmul_flops
    from unmirage.models import load_model

    config = LabConfig()
    world = World(config.world)
    sizes = {**config.model.model_dump(), "image_size": config.world.image_size}
    loaded = load_model("tiny-llava", dtype="float32", tiny_sizes=sizes)
    stage = config.base
    steps = args.steps + 2
    examples = world.base_examples(stage.batch_size * steps, 0, stage.colour_share)
    items = [
        TrainExample(id=str(i), question=e.question, answer=e.answer, image=world.render(e.spec))
        for i, e in enumerate(examples)
    ]
    collate = Collator(loaded, template=config.eval.template)
    batches = list(_batches(len(items), stage.batch_size, steps, 1))
    variants = {"model(**batch).loss": lambda m, b: m(**b).loss, "answer_loss": answer_loss}
    state: dict[str, dict] = {}
    for name in variants:
        model = copy.deepcopy(loaded.model).train()
        for p in model.model.vision_tower.parameters():
            p.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=stage.learning_rate, weight_decay=0.0)
        state[name] = {"model": model, "params": params, "optimizer": optimizer, "seconds": 0.0, "tokens": 0}
    first = collate([items[i] for i in batches[0]])
    first.pop("index", None)
    for name, loss_of in variants.items():  # FLOPs counted on the first batch
        state[name]["flop_per_token"] = (
            step_flop([state[name]["model"]], lambda m, f=loss_of: f(m, first)) / first["input_ids"].numel()
        )
    gflops = matmul_flops(seconds=2.0) / 1e9
    for step in range(steps):
        for name, loss_of in variants.items():
            s = state[name]
            start = time.perf_counter()
            batch = collate([items[i] for i in batches[step]])
            batch.pop("index", None)
            loss = loss_of(s["model"], batch)
            s["optimizer"].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(s["params"], 1.0)
            s["optimizer"].step()
            if step >= 2:
                s["seconds"] += time.perf_counter() - start
                s["tokens"] += batch["input_ids"].numel()
    emit("lab_base_step", "machine fp32 matmul", gflops, "GFLOP/s", threads=args.threads)
    reference = None
    for name, s in state.items():
        ms = 1000 * s["seconds"] / args.steps
        flop = s["flop_per_token"] * s["tokens"] / args.steps
        reached = flop / (ms / 1000) / 1e9
        if reference is None:
            reference = (ms, flop)
        emit(
            "lab_base_step",
            f"{name}: ms per step of {stage.batch_size}",
            ms,
            "ms",
            time_ratio=round(ms / reference[0], 3),
            gflop_per_step=round(flop / 1e9, 2),
            flop_ratio=round(flop / reference[1], 3),
            tokens_per_example=round(s["tokens"] / args.steps / stage.batch_size, 1),
            gflops_reached=round(reached, 1),
            mfu=round(reached / gflops, 3),
        )


if __name__ == "__main__":
    main()
