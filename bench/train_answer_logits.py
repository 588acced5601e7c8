"""Unlearning steps with the LM head at the answer positions only vs at every position, side by side.

The trainer's forward (`unmirage.train.forward.forward`) passes the answer positions as `logits_to_keep`, so
the head and the `[batch, seq, vocab]` logits are computed for the labelled tokens only. This times NPO steps
(forget + retain forward, `sequence_nll`, the NPO loss with a fixed reference, backward, AdamW) of two copies
of the same model on the same batches, the variants' steps interleaved so they share the machine's load:
`full` (`model(...).logits` at every position, the trainer before) and `answer-only` (the trainer now).
Models: MirageLab's tiny LLaVA (batches collated by `Collator`, placeholder images) and a random causal LM of
SmolLM2-135M's shape (Llama, hidden 576, 30 layers, 9 heads, 3 KV heads, vocab 49152, tied embeddings; built
from its config, no download) on random tokens. Lengths are VLGuard-like: prompts of 60-80 tokens, answers of
about 60. Prints ms per step, the ratio to `full`, the logits' size, the step-0 loss difference (the losses
are the same) and this machine's fp32 matmul GFLOP/s.

`python bench/train_answer_logits.py [--models lab-llava smollm2-135m] [--threads 1]`
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from _train_common import PRESETS, WORDS  # noqa: E402

BENCH = "train_answer_logits"
# (batch per side, timed steps) per model; one warm-up step each before timing.
DEFAULTS = {"lab-llava": (16, 12), "smollm2-135m": (2, 3)}
SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


def llava_setup(batch: int, seed: int) -> tuple[Any, Any, list[dict[str, torch.Tensor]]]:
    """MirageLab's tiny LLaVA, its family and forget/retain batches of VLGuard-like lengths."""
    from unmirage.data.collate import Collator
    from unmirage.data.conversations import Example
    from unmirage.models import load_model

    loaded = load_model("tiny-llava", dtype="float32", tiny_sizes=PRESETS["lab"])
    rng = random.Random(seed)

    def words(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    collate = Collator(loaded, placeholder_images=True)
    batches = []
    for side in ("forget", "retain"):
        examples = [
            Example(id=f"{side}{i}", question=words(3, 10) + "?", answer=words(21, 25) + ".")
            for i in range(batch)
        ]
        batches.append({k: v for k, v in collate(examples).items() if k != "index"})
    return loaded.model, loaded.family, batches


def causal_setup(batch: int, seed: int) -> tuple[Any, Any, list[dict[str, torch.Tensor]]]:
    """A random Llama of SmolLM2-135M's shape and right-padded random-token batches (prompt 60-80 tokens,
    answer 50-70, labels on the answer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from unmirage.data.collate import IGNORE_INDEX
    from unmirage.models.families import family_for

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M, pad_token_id=0))
    rng = random.Random(seed)
    batches = []
    for _ in ("forget", "retain"):
        lengths = [(rng.randint(60, 80), rng.randint(50, 70)) for _ in range(batch)]
        width = max(p + a for p, a in lengths)
        ids = torch.zeros(batch, width, dtype=torch.long)
        mask = torch.zeros(batch, width, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX)
        for row, (prompt, answer) in enumerate(lengths):
            ids[row, : prompt + answer] = torch.randint(1, SMOLLM2_135M["vocab_size"], (prompt + answer,))
            mask[row, : prompt + answer] = 1
            labels[row, prompt : prompt + answer] = ids[row, prompt : prompt + answer]
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return model, family_for(model), batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULTS), choices=list(DEFAULTS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default per model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from unmirage.machine import matmul_flops
    from unmirage.methods import sequence_nll
    from unmirage.methods.npo import NPOConfig, npo_loss
    from unmirage.train.forward import forward, model_inputs

    emit(BENCH, "machine fp32 matmul", matmul_flops(seconds=2.0) / 1e9, "GFLOP/s", threads=args.threads)
    config = NPOConfig()
    for name in args.models:
        batch, steps = DEFAULTS[name]
        steps = args.steps or steps
        model, family, (forget, retain) = (llava_setup if name == "lab-llava" else causal_setup)(batch, 0)

        def logits_full(m: Any, b: dict[str, torch.Tensor]) -> torch.Tensor:
            return m(**model_inputs(b), use_cache=False).logits

        def logits_answers(m: Any, b: dict[str, torch.Tensor], fam: Any = family) -> torch.Tensor:
            return forward(m, b, fam)[0]

        variants = {"full": logits_full, "answer-only": logits_answers}
        with torch.no_grad():
            reference = sequence_nll(logits_full(model.eval(), forget), forget["labels"])
        state: dict[str, dict[str, Any]] = {}
        for variant in variants:
            twin = copy.deepcopy(model).train()
            if family.vision_tower is not None:
                for p in twin.get_submodule(family.vision_tower).parameters():
                    p.requires_grad_(False)
            params = [p for p in twin.parameters() if p.requires_grad]
            state[variant] = {
                "model": twin,
                "params": params,
                "optimizer": torch.optim.AdamW(params, lr=1e-5),
                "seconds": 0.0,
                "losses": [],
                "logits_mib": 0.0,
            }
        for step in range(steps + 1):
            for variant, logits_of in variants.items():
                s = state[variant]
                start = time.perf_counter()
                forget_logits = logits_of(s["model"], forget)
                retain_logits = logits_of(s["model"], retain)
                out = npo_loss(
                    config,
                    forget_nll=sequence_nll(forget_logits, forget["labels"]),
                    forget_ref_nll=reference,
                    retain_nll=sequence_nll(retain_logits, retain["labels"]),
                )
                s["optimizer"].zero_grad(set_to_none=True)
                out.loss.backward()
                s["optimizer"].step()
                s["losses"].append(float(out.loss.detach()))
                s["logits_mib"] = (
                    sum(t.numel() * t.element_size() for t in (forget_logits, retain_logits)) / 2**20
                )
                del forget_logits, retain_logits, out
                if step:  # the first step is a warm-up
                    s["seconds"] += time.perf_counter() - start
        sides = (forget, retain)
        common = {
            "model": name,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "batch_per_side": batch,
            "seq_len": [int(b["input_ids"].shape[1]) for b in sides],
            "answer_tokens_per_example": round(
                sum(int((b["labels"] != -100).sum()) for b in sides) / (2 * batch), 1
            ),
            "attended_tokens_per_example": round(
                sum(int(b["attention_mask"].sum()) for b in sides) / (2 * batch), 1
            ),
            "threads": args.threads,
            "steps": steps,
        }
        full_ms = 1000 * state["full"]["seconds"] / steps
        for variant, s in state.items():
            ms = 1000 * s["seconds"] / steps
            emit(
                BENCH,
                f"{name} {variant}: ms per NPO step",
                ms,
                "ms",
                time_ratio=round(ms / full_ms, 3),
                logits_mib=round(s["logits_mib"], 1),
                step0_loss_diff=abs(s["losses"][0] - state["full"]["losses"][0]),
                **common,
            )


if __name__ == "__main__":
    main()
