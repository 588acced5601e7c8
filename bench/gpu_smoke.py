"""GPU smoke test: the real LLaVA-1.5-7B architecture (random bf16 weights) through the unlearning trainer.

Runs NPO and RMU, full-parameter and LoRA, with gradient checkpointing, and prints per case the step time,
tokens/s, peak GPU memory and model-FLOPs utilisation (against this GPU's measured bf16 matmul FLOP/s and,
for H100/H200, the 989 TFLOP/s dense spec). Needs one GPU with >= 80 GB (full-parameter NPO keeps bf16
weights, gradients and AdamW states: about 56 GB for 7B). Nothing is downloaded: the tokenizer is unmirage's
offline tiny tokenizer (token ids stay far below the 32064-entry vocabulary), images are grey 336 px.
Record the printed numbers in bench/RESULTS.md with the card's name.

`python bench/gpu_smoke.py [--cases npo_full npo_lora rmu_full rmu_lora] [--steps 4] [--batch 2]`
`python bench/gpu_smoke.py --dry-run` runs the same code on CPU with a tiny configuration.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from _train_common import StepTimer, write_data  # noqa: E402

BENCH = "gpu_smoke"
SPEC_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
# LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf config): CLIP ViT-L/14-336 + Vicuna-7B.
LLAVA_7B = {
    "vision": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    ),
    "text": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
}
DRY = {
    "vision": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=32,
    ),
    "text": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=1024,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
    ),
}
CASES = {
    "npo_full": [
        "method.name=npo",
        "method.beta=0.9",
        "method.retain_npo_weight=1",
        "train.learning_rate=5e-7",
    ],
    "npo_lora": [
        "method.name=npo",
        "method.beta=0.9",
        "method.retain_npo_weight=1",
        "lora.r=128",
        "lora.alpha=256",
        "train.learning_rate=1.1e-5",
    ],
    "rmu_full": [
        "method.name=rmu",
        "method.layer=7",
        "method.steering_coeff=10",
        "method.alpha=1",
        "train.learning_rate=5e-5",
    ],
    "rmu_lora": [
        "method.name=rmu",
        "method.layer=7",
        "method.steering_coeff=10",
        "method.alpha=1",
        "lora.r=128",
        "lora.alpha=256",
        "lora.train_projector=true",
        "train.learning_rate=1.1e-5",
    ],
}
WARMUP = 1


def build_llava(sizes: dict[str, dict], device: str, dtype: torch.dtype) -> Any:
    """A LoadedModel of the LLaVA class with `sizes`, random weights created directly on `device`."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from unmirage.models import LoadedModel, get_family
    from unmirage.models.families.llava import LLAVA_CHAT_TEMPLATE
    from unmirage.models.tiny import build_tokenizer

    tokenizer = build_tokenizer("llava", 1024)
    vision = sizes["vision"]
    text = LlamaConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **sizes["text"],
    )
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=patches,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.config.use_cache = False
    size = vision["image_size"]
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return LoadedModel(
        model=model, processor=processor, family=get_family("llava"), source="llava-1.5-7b-random"
    )


def matmul_peak(device: str, dtype: torch.dtype, n: int) -> float:
    """Best measured FLOP/s of an n x n matmul on `device`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n**3 / best


def step_flops(model: Any, batch_tokens: int, image_tokens: int, seq: int, sizes: dict, lora: bool) -> float:
    """Model FLOPs of one step (forget + retain): 6 x LM linear weights x tokens, forward of the vision tower
    on the image tokens, and attention 12 x layers x width x seq per token. With LoRA the frozen weights
    still need the input-gradient matmul (4x instead of 6x)."""
    from torch import nn

    from unmirage.models.families import unwrap

    base = unwrap(model)
    vision = sum(
        m.weight.numel() for n, m in base.named_modules() if isinstance(m, nn.Linear) and "vision_tower" in n
    )
    text = sum(m.weight.numel() for m in base.modules() if isinstance(m, nn.Linear)) - vision
    factor = 4 if lora else 6
    t = sizes["text"]
    attention = 12 * t["num_hidden_layers"] * t["hidden_size"] * seq * batch_tokens
    return factor * text * batch_tokens + 2 * vision * image_tokens + attention


def run_case(
    name: str, args: argparse.Namespace, sizes: dict, device: str, data: tuple[Path, Path], tmp: Path
) -> None:
    from unmirage.train import load_recipe, run_unlearning

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    loaded = build_llava(sizes, device, torch.bfloat16 if device == "cuda" else torch.float32)
    timer = StepTimer()
    overrides = [
        "model=llava-1.5-7b-random",
        f"data.forget={data[0]}",
        f"data.retain={data[1]}",
        "data.placeholder_images=true",
        f"output_dir={tmp / name}",
        f"train.per_device_train_batch_size={args.batch}",
        f"train.max_steps={args.steps + WARMUP}",
        "train.report_to=none",
        "train.save_strategy='no'",
        "train.disable_tqdm=true",
        f"train.bf16={'true' if device == 'cuda' else 'false'}",
        f"train.use_cpu={'false' if device == 'cuda' else 'true'}",
        "gradient_checkpointing=true",
        # fused AdamW: no foreach temporaries (a 7B full-parameter step would need another ~14 GB)
        f"train.optim={'adamw_torch_fused' if device == 'cuda' else 'adamw_torch'}",
        "save_model=false",
        "plot=false",
        *CASES[name],
    ]
    if args.dry_run:
        overrides = [o.replace("method.layer=7", "method.layer=3") for o in overrides]
    recipe, config = load_recipe(None, overrides)
    start = time.perf_counter()
    result = run_unlearning(recipe, config, callbacks=(timer,), loaded=loaded)
    total = time.perf_counter() - start
    step_s = statistics.median(timer.times[WARMUP:])
    inputs = next(iter(result.trainer.get_train_dataloader()))
    tokens = sum(int(side["attention_mask"].sum()) for side in inputs.values())
    image = sum(
        int(loaded.family.image_mask(side["input_ids"], loaded.model).sum()) for side in inputs.values()
    )
    seq = max(side["input_ids"].shape[1] for side in inputs.values())
    flops = step_flops(result.trainer.model, tokens, image, seq, sizes, recipe.lora is not None)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    common = {
        "case": name,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
        "batch": args.batch,
        "tokens_per_step": tokens,
        "reference": result.reference,
        "trainable": result.trainable_parameters,
        "first_step_s": round(timer.times[0], 3),
        "run_s": round(total, 1),
    }
    emit(BENCH, f"{name}_step_time", step_s, "s", **common)
    emit(BENCH, f"{name}_tokens_per_s", tokens / step_s, "tok/s", **common)
    if device == "cuda":
        emit(BENCH, f"{name}_peak_memory", peak_mem, "GiB", **common)
    emit(
        BENCH,
        f"{name}_mfu_measured_peak",
        flops / step_s / args.peak,
        "",
        peak_tflops=round(args.peak / 1e12, 1),
    )
    if args.spec_peak:
        emit(
            BENCH,
            f"{name}_mfu_spec_peak",
            flops / step_s / args.spec_peak,
            "",
            spec_tflops=args.spec_peak / 1e12,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=4, help=f"measured optimizer steps (+{WARMUP} warm-up)")
    parser.add_argument("--batch", type=int, default=2, help="per-device batch of forget and of retain")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny configuration on CPU (checks the script)"
    )
    parser.add_argument("--child", choices=list(CASES), help="(internal) run one case in this process")
    parser.add_argument("--data", type=Path, help="(internal) folder with forget.json and retain.json")
    args = parser.parse_args()
    if not args.child:
        # one process per case: a clean peak-memory count, and an out-of-memory case does not stop the rest
        with tempfile.TemporaryDirectory() as tmp:
            write_data(Path(tmp), n=4 * args.batch, words=48)
            failed = []
            for case in args.cases:
                command = [
                    sys.executable,
                    __file__,
                    "--child",
                    case,
                    "--data",
                    tmp,
                    "--steps",
                    str(args.steps),
                ]
                command += ["--batch", str(args.batch)] + (["--dry-run"] if args.dry_run else [])
                if subprocess.run(command).returncode != 0:
                    failed.append(case)
        if failed:
            sys.exit(f"failed cases: {', '.join(failed)}")
        return
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no GPU: use --dry-run to check the script on CPU")
    sizes = DRY if args.dry_run else LLAVA_7B
    args.peak = matmul_peak(
        device, torch.bfloat16 if device == "cuda" else torch.float32, 8192 if device == "cuda" else 512
    )
    name = torch.cuda.get_device_name() if device == "cuda" else ""
    args.spec_peak = next((v for k, v in SPEC_PEAK.items() if k in name), None)
    data = (args.data / "forget.json", args.data / "retain.json")
    with tempfile.TemporaryDirectory() as tmp:
        run_case(args.child, args, sizes, device, data, Path(tmp))


if __name__ == "__main__":
    main()
