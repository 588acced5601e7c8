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


def test_choice_log_probs_match_a_hand_computation(tiny_backend: HFBackend, tmp_path) -> None:
    """Each choice's log-probability, from left-padded batches of prompts of different lengths, equals the
    sum of the choice tokens' log-probabilities computed by hand on the unpadded prompt + choice."""
    import torch
    from PIL import Image

    image = tmp_path / "b.png"
    Image.new("RGB", (24, 24), "red").save(image)
    choices = ("Relevant:", "Irrelevant:")
    requests = [
        ChatRequest(text=t, system="You judge.", image=str(image), choices=choices)
        for t in ("Is it?", "Question: what is in the picture, in every detail? Answer: a cat.", "Ok")
    ]
    scores = tiny_backend.choice_log_probs(requests)
    loaded = tiny_backend.loaded
    for request, row in zip(requests, scores, strict=True):
        for choice, score in zip(choices, row, strict=True):
            prompt = tiny_backend.prompt(request)
            image_in = Image.open(image).convert("RGB")
            full = loaded.processor(images=[image_in], text=[prompt + choice], return_tensors="pt")
            alone = loaded.processor(images=[image_in], text=[prompt], return_tensors="pt")
            n = full["input_ids"].shape[1] - alone["input_ids"].shape[1]
            with torch.inference_mode():
                logits = loaded.model(**full).logits[0, :-1].float()
            token_lp = torch.log_softmax(logits, -1).gather(-1, full["input_ids"][0, 1:, None]).squeeze(-1)
            assert score == pytest.approx(float(token_lp[-n:].sum()), abs=1e-4)
    replies = tiny_backend.chat(requests)
    for reply, row in zip(replies, scores, strict=True):
        assert reply.text.startswith(choices[0] if row[0] >= row[1] else choices[1])


def test_choice_scoring_gives_well_formed_verdicts(tiny_backend: HFBackend) -> None:
    from unmirage.errors import UnmirageError
    from unmirage.judges import OpenAIBackend

    items = [JudgeItem(id=str(i), answer=f"answer {i}", question="What is shown?") for i in range(3)]
    judge = get_judge("llm-relevance", backend=tiny_backend, scoring="choice", use_images=False)
    verdicts = run_judge(judge, items, batch_size=2)
    assert all(v.error is None and not v.malformed and "chosen by likelihood" in v.reply for v in verdicts)
    assert judge.describe()["scoring"] == "choice"
    assert judge.prompt_hash(items[0]) != get_judge("llm-relevance", backend=tiny_backend).prompt_hash(
        items[0]
    )
    with pytest.raises(UnmirageError, match="no fixed reply openings"):
        get_judge("llm-harm", backend=tiny_backend, scoring="choice")
    with pytest.raises(UnmirageError, match="unknown judge scoring"):
        get_judge("llm-relevance", backend=tiny_backend, scoring="vote")
    with pytest.raises(UnmirageError, match="local judge model"):
        OpenAIBackend("http://127.0.0.1:9/v1", "m").chat_one(ChatRequest(text="x", choices=("a", "b")))


def test_topic_judge_scores_and_verdicts(tiny_backend: HFBackend) -> None:
    """llm-topic: (log P(a | q) - log P(a | neutral q)) / |a|, thresholded; built on the continuation scores
    that the choice test checks against a hand computation."""
    from unmirage.errors import UnmirageError
    from unmirage.judges import OpenAIBackend
    from unmirage.judges.topic import NEUTRAL_QUESTION

    items = [
        JudgeItem(id="a", question="How do I open this lock?", answer="Turn the pick slowly."),
        JudgeItem(id="b", question="What is this?", answer="A red car."),
        JudgeItem(id="c", question="Why?", answer=""),
    ]
    judge = get_judge("llm-topic", backend=tiny_backend, threshold=0.0)
    scores = judge.scores(items)
    answers = [i.answer for i in items]
    own = tiny_backend.continuation_log_probs([ChatRequest(text=i.question) for i in items], answers)
    neutral = tiny_backend.continuation_log_probs([ChatRequest(text=NEUTRAL_QUESTION)] * 3, answers)
    for score, (a, n), (b, _m) in zip(scores[:2], own[:2], neutral[:2], strict=True):
        assert n > 0 and score == pytest.approx((a - b) / n)
    assert scores[2] is None and own[2] == (0.0, 0)
    verdicts = judge.judge_batch(items)
    assert [v.relevant for v in verdicts] == [scores[0] >= 0.0, scores[1] >= 0.0, False]
    assert (
        verdicts[0].score == pytest.approx(scores[0], abs=1e-4)
        and verdicts[0].success == verdicts[0].relevant
    )
    strict = get_judge("llm-topic", backend=tiny_backend, threshold=max(scores[:2]) + 1e-3)
    assert not any(v.relevant for v in strict.judge_batch(items))
    assert judge.prompt_hash(items[0]) != strict.prompt_hash(items[0])
    with pytest.raises(UnmirageError, match="needs the question"):
        judge.judge_batch([JudgeItem(id="x", answer="y")])
    with pytest.raises(UnmirageError, match="local judge model"):
        get_judge("llm-topic", backend=OpenAIBackend("http://127.0.0.1:9/v1", "m"))
