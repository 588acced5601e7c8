"""What the SmolLM2 experiment (recipes/smol-vlguard) costs on this machine, measured side by side.

For the converted SmolLM2-135M-Instruct (text) and its composed LLaVA form (placeholder image), prints: load
time, a LoRA SFT step at batch 8 (r 16 on every LM linear layer, AdamW, chat template, answers cut to 64
tokens, real VLGuard training pairs), a greedy generation batch of 16 (64 new tokens), and how far the
composed model's text answers drift from the plain LM's (`text_fidelity`). Ratios are VLM / text.

    unmirage models convert-gguf --out models/smollm2
    unmirage models compose --language-model models/smollm2 --out models/smollm2-vlm
    OMP_NUM_THREADS=2 python bench/smol_costs.py --lm models/smollm2 --vlm models/smollm2-vlm \
        --vlguard ../shared/data/vlguard
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

FIDELITY_QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Explain photosynthesis in one sentence.",
    "How do I make a cup of tea?",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Name three animals that live in the ocean.",
    "What does a thermometer measure?",
    "Describe a sunset in two sentences.",
    "Why do we need sleep?",
    "How many days are in a leap year?",
    "Suggest a name for a pet goldfish.",
]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def training_pairs(vlguard: Path, tokenizer, n: int, answer_tokens: int) -> list:
    """The first `n` (question, answer) pairs of VLGuard train (every kind), answers cut to `answer_tokens`."""
    from unmirage.data.collate import TrainExample

    pairs = []
    for record in json.loads((vlguard / "train.json").read_text()):
        for item in record["instr-resp"]:
            question = next(v for k, v in item.items() if k != "response")
            ids = tokenizer(item["response"], add_special_tokens=False)["input_ids"][:answer_tokens]
            pairs.append(TrainExample(id=record["id"], question=question, answer=tokenizer.decode(ids)))
    return pairs[:n]


def lora_step_seconds(loaded, examples, steps: int) -> tuple[float, int]:
    """Median seconds of a LoRA training step (after one warm-up step) and the tokens per step."""
    from peft import LoraConfig, get_peft_model

    from unmirage.data.collate import Collator

    model = get_peft_model(
        loaded.model, LoraConfig(r=16, lora_alpha=32, target_modules=loaded.family.lora_target_regex())
    )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    batch = Collator(loaded, template="chat", placeholder_images=True, max_length=512)(examples)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    model.unload()
    loaded.model.eval()
    return statistics.median(times[1:]), int(batch["attention_mask"].sum())


def generation_ms_per_token(loaded, questions: list[str], new_tokens: int) -> float:
    """Milliseconds per generated token per row, greedy, one left-padded batch."""
    from unmirage.data.collate import placeholder_image

    tokenizer = loaded.tokenizer
    prompts = [loaded.family.build_prompt(q, template="chat", processor=loaded.processor) for q in questions]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    if loaded.multimodal:
        images = [placeholder_image(loaded.processor)] * len(prompts)
        batch = loaded.processor(images=images, text=prompts, padding=True, return_tensors="pt")
    else:
        batch = tokenizer(prompts, padding=True, return_tensors="pt")
    tokenizer.padding_side = side
    start = time.perf_counter()
    with torch.no_grad():
        loaded.model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return (time.perf_counter() - start) / new_tokens * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lm", type=Path, required=True, help="converted SmolLM2 folder")
    parser.add_argument("--vlm", type=Path, required=True, help="composed VLM folder")
    parser.add_argument("--vlguard", type=Path, required=True, help="folder with VLGuard train.json")
    parser.add_argument("--steps", type=int, default=3, help="timed LoRA steps (after one warm-up)")
    parser.add_argument("--new-tokens", type=int, default=64, help="generated tokens per row")
    args = parser.parse_args()

    from unmirage.models import load_model
    from unmirage.models.compose import text_fidelity

    torch.manual_seed(0)
    rows = {}
    for name, folder in (("text", args.lm), ("vlm", args.vlm)):
        start = time.perf_counter()
        loaded = load_model(folder, dtype="float32")
        load_s = time.perf_counter() - start
        examples = training_pairs(args.vlguard, loaded.tokenizer, 8, 64)
        step_s, tokens = lora_step_seconds(loaded, examples, args.steps)
        questions = [e.question for e in training_pairs(args.vlguard, loaded.tokenizer, 16, 1)]
        gen_ms = generation_ms_per_token(loaded, questions, args.new_tokens)
        rows[name] = {
            "load_s": load_s,
            "lora_step_s": step_s,
            "step_tokens": tokens,
            "train_tokens_per_s": tokens / step_s,
            "gen_ms_per_token_row": gen_ms / 16,
            "gen_tokens_per_s": 16 * 1000 / gen_ms,
        }
        print(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in rows[name].items()), flush=True)
    print(f"peak RSS {peak_rss_gb():.2f} GB")
    for key in ("lora_step_s", "gen_ms_per_token_row"):
        print(f"ratio vlm/text {key}: {rows['vlm'][key] / rows['text'][key]:.2f}x")
    report = text_fidelity(load_model(args.lm), load_model(args.vlm), FIDELITY_QUESTIONS, max_new_tokens=32)
    print(
        f"fidelity over {report.prompts} prompts: greedy identical {report.greedy_identical:.2f}, "
        f"common prefix {report.mean_common_prefix:.1f}/32 tokens, mean KL {report.mean_kl:.4f} nats, "
        f"top-1 agreement {report.top1_agreement:.3f}"
    )


if __name__ == "__main__":
    main()
