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
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

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
    from unmirage.data.conversations import Example

    pairs = []
    for record in json.loads((vlguard / "train.json").read_text()):
        for item in record["instr-resp"]:
            question = next(v for k, v in item.items() if k != "response")
            ids = tokenizer(item["response"], add_special_tokens=False)["input_ids"][:answer_tokens]
            pairs.append(Example(id=record["id"], question=question, answer=tokenizer.decode(ids)))
    return pairs[:n]


class LoraStepper:
    """One model with LoRA r 16 on every LM linear layer, AdamW, and a fixed batch of 8 training pairs."""

    def __init__(self, loaded, examples) -> None:
        from peft import LoraConfig, get_peft_model

        from unmirage.data.collate import Collator

        self.model = get_peft_model(
            loaded.model, LoraConfig(r=16, lora_alpha=32, target_modules=loaded.family.lora_target_regex())
        )
        self.model.train()
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=2e-4)
        self.batch = Collator(loaded, template="chat", placeholder_images=True, max_length=512)(examples)
        self.tokens = int(self.batch["attention_mask"].sum())

    def step(self) -> float:
        """Seconds of one training step (forward, backward, optimizer)."""
        start = time.perf_counter()
        self.model(**self.batch).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return time.perf_counter() - start


def generation_ms_per_token(loaded, questions: list[str], new_tokens: int) -> float:
    """Milliseconds per generated token for the whole left-padded batch, greedy."""
    from unmirage.placeholder import placeholder_image, placeholder_size

    tokenizer = loaded.tokenizer
    prompts = [loaded.family.build_prompt(q, template="chat", processor=loaded.processor) for q in questions]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    if loaded.multimodal:
        images = [placeholder_image(placeholder_size(loaded.processor))] * len(prompts)
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
    parser.add_argument("--lm", type=Path, help="converted SmolLM2 folder")
    parser.add_argument("--vlm", type=Path, help="composed VLM folder")
    parser.add_argument(
        "--vlguard", type=Path, default=os.environ.get("UNMIRAGE_VLGUARD_DIR"), help="folder with train.json"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best of each)")
    parser.add_argument("--new-tokens", type=int, default=64, help="generated tokens per row")
    args = parser.parse_args()
    if args.lm is None or args.vlm is None or args.vlguard is None:
        print(
            "smol_costs: skipped (needs --lm, --vlm and --vlguard: the real model is too slow for `make bench`)"
        )
        return

    from unmirage.models import load_model
    from unmirage.models.compose import text_fidelity

    torch.manual_seed(0)
    loaded, load_s, steppers, questions = {}, {}, {}, {}
    for name, folder in (("text", args.lm), ("vlm", args.vlm)):
        start = time.perf_counter()
        loaded[name] = load_model(folder, dtype="float32")
        load_s[name] = time.perf_counter() - start
        questions[name] = [e.question for e in training_pairs(args.vlguard, loaded[name].tokenizer, 16, 1)]
    # interleaved rounds, best of each: the machine is shared, contention only ever adds time
    gen = {name: [] for name in loaded}
    for _ in range(args.rounds):
        for name in loaded:
            gen[name].append(generation_ms_per_token(loaded[name], questions[name], args.new_tokens))
    for name in loaded:
        steppers[name] = LoraStepper(
            loaded[name], training_pairs(args.vlguard, loaded[name].tokenizer, 8, 64)
        )
        steppers[name].step()  # warm-up
    steps = {name: [] for name in loaded}
    for _ in range(args.rounds):
        for name in loaded:
            steps[name].append(steppers[name].step())
    rows = {}
    for name in loaded:
        step_s, gen_ms = min(steps[name]), min(gen[name])
        rows[name] = {
            "load_s": load_s[name],
            "lora_step_s": step_s,
            "step_tokens": steppers[name].tokens,
            "train_tokens_per_s": steppers[name].tokens / step_s,
            "gen_ms_per_token_row": gen_ms / 16,
            "gen_tokens_per_s": 16 * 1000 / gen_ms,
        }
        for key, value in rows[name].items():
            emit("smol_costs", f"{name} {key}", value)
        steppers[name].model.unload()
        loaded[name].model.eval()
    emit("smol_costs", "peak RSS", peak_rss_gb(), "GB")
    for key in ("lora_step_s", "gen_ms_per_token_row"):
        emit("smol_costs", f"vlm/text {key}", rows["vlm"][key] / rows["text"][key], "x")
    report = text_fidelity(loaded["text"], loaded["vlm"], FIDELITY_QUESTIONS, max_new_tokens=32)
    for key in ("greedy_identical", "mean_common_prefix", "mean_kl", "top1_agreement"):
        emit("smol_costs", f"fidelity {key}", getattr(report, key), "nats" if key == "mean_kl" else "")
    for example in report.examples[:3]:
        print(json.dumps(example, ensure_ascii=False))


if __name__ == "__main__":
    main()
