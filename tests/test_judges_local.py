"""The local Hugging Face judge backend on the tiny LLaVA: chat-template prompts, images, batching."""

from __future__ import annotations

import pytest

from unmirage.judges import ChatRequest, HFBackend, JudgeItem, get_judge, run_judge
from unmirage.judges.llm import parse_relevance


@pytest.fixture(scope="module")
def tiny_backend() -> HFBackend:
    return HFBackend("tiny-llava", dtype="float32", batch_size=2)


def test_hf_backend_batches_with_and_without_images(tiny_backend: HFBackend, tmp_path) -> None:
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (30, 20), "green").save(image)
    requests = [
        ChatRequest(text="Describe it.", system="You judge.", image=str(image), max_tokens=4),
        ChatRequest(text="Say hi.", max_tokens=4),
        ChatRequest(text="Describe it again.", image=str(image), max_tokens=4),
    ]
    replies = tiny_backend.chat(requests)
    assert len(replies) == 3 and all(r.error is None and isinstance(r.text, str) for r in replies)
    # greedy: the same request gives the same reply, alone or in a batch
    assert tiny_backend.chat(requests[:1])[0] == replies[0]
    prompt = tiny_backend.prompt(requests[0])
    assert "You judge." in prompt and tiny_backend.loaded.family.image_placeholder in prompt
    assert tiny_backend.loaded.family.image_placeholder not in tiny_backend.prompt(requests[1])


def test_llm_relevance_on_local_backend(tiny_backend: HFBackend, tmp_path) -> None:
    items = [JudgeItem(id=str(i), answer=f"answer {i}", question="What is shown?") for i in range(3)]
    verdicts = run_judge(get_judge("llm-relevance", backend=tiny_backend, max_tokens=4), items, batch_size=2)
    assert all(v.error is None and v.malformed == parse_relevance(v.reply)[1] for v in verdicts)
