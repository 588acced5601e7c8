"""The vLLM backend's request building and row mapping, with a stand-in for `vllm` (no GPU here)."""

from __future__ import annotations

import sys
import types

import pytest
from PIL import Image

from unmirage.errors import UnmirageError
from unmirage.generate import GenerationConfig, GenItem
from unmirage.generate.vllm import VLLMGenerator, load_for_vllm


class FakeLLM:
    """Records requests; answers each with its prompt's length so the order can be checked."""

    def __init__(self):
        self.requests = []

    def generate(self, requests, params, use_tqdm=False):
        self.requests.extend(requests)
        assert params.temperature == 0.0
        return [
            types.SimpleNamespace(
                outputs=[types.SimpleNamespace(text=f" n={len(r['prompt'])}", token_ids=[7, 8])]
            )
            for r in requests
        ]


@pytest.fixture()
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_vllm_requests_and_rows(tiny_llava_dir, fake_vllm):
    folder = tiny_llava_dir
    llm = FakeLLM()
    loaded = load_for_vllm(str(folder), llm=llm)
    gen = VLLMGenerator(loaded, GenerationConfig(max_new_tokens=8, batch_size=2))
    items = [
        GenItem(id=str(i), question="What is it?" + " really" * i, image=Image.new("RGB", (32, 32)))
        for i in range(3)
    ]
    rows = gen(items)
    assert [r["id"] for r in rows] == ["0", "1", "2"]
    for request in llm.requests:
        assert request["prompt"].endswith("ASSISTANT:") and "<image>\n" in request["prompt"]
        assert isinstance(request["multi_modal_data"]["image"], Image.Image)
    assert all(r["answer"] == f"n={len(gen.prompt(i, True))}" for r, i in zip(rows, items))
    with pytest.raises(UnmirageError, match="placeholder_images"):
        gen([GenItem(id="x", question="q")])


def test_backend_choice_errors():
    from unmirage.generate.backends import load_for_generation

    with pytest.raises(UnmirageError, match="unknown generation backend"):
        load_for_generation("tiny-llava", backend="tgi")
    with pytest.raises(UnmirageError, match="merged weights"):
        load_for_generation("tiny-llava", backend="vllm", adapter="some/lora")


def test_vllm_refuses_vision_families_it_does_not_serve(tmp_path):
    from transformers import PaliGemmaConfig

    PaliGemmaConfig().save_pretrained(tmp_path)
    with pytest.raises(
        UnmirageError, match="supports llava, qwen2_5_vl and text-only models, not 'paligemma'"
    ):
        load_for_vllm(str(tmp_path), llm=FakeLLM())
