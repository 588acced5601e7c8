"""vLLM generation backend (GPU; `pip install unmirage[vllm]`) behind the `BatchedGenerator` interface.

Prompts are the family adapter's (the same text the Hugging Face backend builds, with the image placeholder
left for vLLM to expand); decoding is greedy (temperature 0). Plans, resume and shards are inherited, so
`run_generation` works unchanged. vLLM schedules its own batches: `batch_size` only sets how many prompts
are submitted (and written) at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from unmirage.errors import UnmirageError
from unmirage.generate.batched import BatchedGenerator, GenItem
from unmirage.models.load import LoadedModel

if TYPE_CHECKING:
    from vllm import LLM


def load_for_vllm(
    source: str,
    *,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    gpu_memory_utilization: float = 0.9,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    llm: LLM | None = None,
) -> LoadedModel:
    """A `LoadedModel` whose `.model` is a `vllm.LLM` (or the given `llm`), with the HF processor and family."""
    from transformers import AutoConfig

    from unmirage.models.families import FAMILIES, family_class, family_for
    from unmirage.models.load import load_processor

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    known = family_class(config.model_type)
    if getattr(config, "vision_config", None) is not None and not (known and known.vllm):
        served = [name for name, cls in FAMILIES.items() if cls.vllm and cls.multimodal]
        raise UnmirageError(
            f"the vLLM backend supports {', '.join(served)} and text-only models, not "
            f"'{config.model_type}'; use backend=hf",
            file=source,
        )
    family = family_for(config)
    if llm is None:
        try:
            from vllm import LLM
        except ImportError:
            raise UnmirageError("the vLLM backend needs `pip install unmirage[vllm]` (and a GPU)") from None
        kwargs: dict[str, Any] = {
            "model": source,
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
        }
        if family.multimodal:
            kwargs["limit_mm_per_prompt"] = {"image": 1}
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        llm = LLM(**kwargs)
    processor = load_processor(source, config.model_type, trust_remote_code=trust_remote_code)
    return LoadedModel(model=llm, processor=processor, family=family, source=source, info={"backend": "vllm"})


class VLLMGenerator(BatchedGenerator):
    """Greedy generation through `vllm.LLM.generate`, with the same prompts, rows and resume as the HF one."""

    def encode(self, batch: Sequence[GenItem]) -> tuple[list[dict[str, Any]], list[bool]]:
        """vLLM requests: the prompt text and, for VLMs, the PIL image under `multi_modal_data`."""
        requests, with_image = [], []
        for item in batch:
            image = self._image(item)
            if self.loaded.multimodal and image is None:
                raise UnmirageError(
                    "item has no image; give image_root or placeholder_images", record=item.id
                )
            request: dict[str, Any] = {"prompt": self.prompt(item, image is not None)}
            if image is not None:
                request["multi_modal_data"] = {"image": image}
            requests.append(request)
            with_image.append(image is not None)
        return requests, with_image

    def generate_batch(self, inputs: list[dict[str, Any]]) -> list[str]:
        """Greedy completions of the requests, in order."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=self.config.max_new_tokens)
        outputs = self.loaded.model.generate(inputs, params, use_tqdm=False)
        self.new_tokens += sum(len(out.outputs[0].token_ids) for out in outputs)
        return [out.outputs[0].text for out in outputs]
