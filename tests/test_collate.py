from __future__ import annotations

import pytest
import torch
from PIL import Image

from helpers import tiny_llama
from unmirage.data.collate import IGNORE_INDEX, Collator, PairedCollator, PairedDataset
from unmirage.data.conversations import Example
from unmirage.data.images import ImageLoader
from unmirage.errors import UnmirageError
from unmirage.models import load_model, tiny_families
from unmirage.placeholder import placeholder_size


@pytest.fixture(scope="module", params=tiny_families())
def tiny(request):
    return load_model(f"tiny-{request.param}")


def _examples(n=3):
    answers = ["A red ring.", "Sure, here is the recipe: mix, heat and stir slowly.", "I cannot help."]
    return [
        Example(
            id=f"r{i}",
            question=f"What is object number {i}?",
            answer=answers[i % 3],
            image=Image.new("RGB", (48, 40), (30 * i, 60, 90)),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("template", ["v1", "chat"])
def test_labels_cover_exactly_the_answer(tiny, template):
    examples = _examples()
    batch = Collator(tiny, template=template)(examples)
    tok = tiny.tokenizer
    end = tiny.family.answer_text("", template=template, processor=tiny.processor)
    for row, example in enumerate(examples):
        labels = batch["labels"][row]
        ids = batch["input_ids"][row]
        positions = (labels != IGNORE_INDEX).nonzero().flatten()
        # contiguous, ends at the last real token, and the labels equal the input ids there
        assert torch.equal(positions, torch.arange(positions[0], positions[-1] + 1))
        assert positions[-1] == batch["attention_mask"][row].sum() - 1
        assert torch.equal(labels[positions], ids[positions])
        # token by token: the labelled tokens are exactly the tokenised answer (+ end of turn)
        expected = tok(
            tiny.family.answer_text(example.answer, template=template, processor=tiny.processor),
            add_special_tokens=False,
        )["input_ids"]
        assert labels[positions].tolist() == expected, (tok.decode(labels[positions]), example.answer + end)
        # no image token and no padding is labelled
        assert not (labels[ids == tiny.family.image_token_id(tiny.model)] != IGNORE_INDEX).any()
        assert not (labels[batch["attention_mask"][row] == 0] != IGNORE_INDEX).any()
    out = tiny.model(**{k: v for k, v in batch.items() if k != "index"})
    assert torch.isfinite(out.loss)


def test_truncation_cuts_answer_never_image(tiny):
    collator = Collator(tiny, template="v1", max_length=10_000)
    batch = collator(_examples(2))
    long_row = int(batch["attention_mask"].sum(1).argmax())
    n_answer = int((batch["labels"][long_row] != IGNORE_INDEX).sum())
    length = int(batch["attention_mask"][long_row].sum())
    cut = Collator(tiny, template="v1", max_length=length - 2)(_examples(2))
    assert cut["input_ids"].shape[1] == length - 2
    assert int((cut["labels"][long_row] != IGNORE_INDEX).sum()) == n_answer - 2
    with pytest.raises(UnmirageError, match="record r0.*max_length"):
        Collator(tiny, template="v1", max_length=length - n_answer - 1)(_examples(1))


def test_prompts_that_cannot_fit_are_found_before_training(tiny):
    """The length the check computes (text tokens + the first image's tokens) is each prompt's real length,
    so it names the longest prompt and the max_length to set, and passes at exactly that length."""
    examples = [
        Example(id=f"q{i}", question="What is " + "very " * (3 * i) + "red?", answer="Red.", image=image)
        for i, image in enumerate(e.image for e in _examples(3))
    ]
    collator = Collator(tiny, template="chat", max_length=10_000)
    real = [int(collator.encode_prompts([e])["attention_mask"].sum()) for e in examples]
    assert real == sorted(real) and real[0] < real[2]
    with pytest.raises(
        UnmirageError, match=rf"record q2: 1 of 3 forget prompts .* has {real[2]} tokens: set "
    ):
        Collator(tiny, template="chat", max_length=real[2] - 1).check_prompts_fit(examples, "forget")
    Collator(tiny, template="chat", max_length=real[2]).check_prompts_fit(examples, "forget")
    text_only = [Example(id="t", question="What " * 40 + "?", answer="A.")]
    with pytest.raises(UnmirageError, match="record t: 1 of 1 retain prompts"):
        Collator(tiny, template="v1", max_length=20, placeholder_images=True).check_prompts_fit(
            text_only, "retain"
        )


def test_placeholder_and_mixed_batches(tiny):
    text_only = [Example(id="t", question="What?", answer="It is.")]
    batch = Collator(tiny, template="v1", placeholder_images=True)(text_only)
    assert (batch["input_ids"] == tiny.family.image_token_id(tiny.model)).any()
    width, height = placeholder_size(tiny.processor)
    assert width == height == 32
    with pytest.raises(UnmirageError, match="mixes examples"):
        Collator(tiny, template="v1")(_examples(1) + text_only)


def test_causal_lm_text_only():
    from unmirage.models.families import family_for
    from unmirage.models.load import LoadedModel
    from unmirage.models.tiny import build_tokenizer

    tok = build_tokenizer("llava")
    model = tiny_llama(tok, seed=None)
    loaded = LoadedModel(model=model, processor=tok, family=family_for(model), source="test")
    batch = Collator(loaded, template="v1")(_examples(2))
    assert "pixel_values" not in batch
    assert int((batch["labels"][0] != IGNORE_INDEX).sum()) == len(
        tok(" A red ring.</s>", add_special_tokens=False)["input_ids"]
    )


def test_paired_dataset_cycles_and_indexes(tiny):
    forget = [Example(id=f"f{i}", question="Q", answer="A") for i in range(3)]
    retain = [Example(id=f"r{i}", question="Q", answer="A") for i in range(7)]
    data = PairedDataset(forget, retain, seed=1)
    assert len(data) == 7
    pass_one = [data[i]["forget"].id for i in range(3)]
    assert sorted(pass_one) == ["f0", "f1", "f2"]
    assert [data[i]["retain"].index for i in range(7)] == list(range(7))
    assert len(PairedDataset(forget, retain, epoch_over="forget")) == 3
    with pytest.raises(UnmirageError, match="empty"):
        PairedDataset([], retain)
    batch = PairedCollator(Collator(tiny, template="v1", placeholder_images=True))([data[0], data[1]])
    assert set(batch) == {"forget", "retain"}
    assert batch["forget"]["index"].tolist() == [data[0]["forget"].index, data[1]["forget"].index]


def test_examples_from_a_conversation_file_with_an_image_root(tiny, tmp_path):
    from unmirage.data.conversations import load_examples

    root = tmp_path / "img"
    root.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(root / "a.png")
    (tmp_path / "forget.json").write_text(
        '[{"id": "f0", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\\nWhat?"},'
        ' {"from": "gpt", "value": "A square."}]}]'
    )
    examples = load_examples(tmp_path / "forget.json")
    assert examples == [Example(id="f0", question="What?", answer="A square.", image="a.png")]
    batch = Collator(tiny, template="v1", image_loader=ImageLoader(root=root))(examples)
    assert "index" not in batch and (batch["labels"] != IGNORE_INDEX).any()
    with pytest.raises(UnmirageError, match="record id f0: image not found"):
        Collator(tiny, template="v1", image_loader=ImageLoader(root=tmp_path))(examples)


class _MergingTokenizer:
    """The tiny model's tokenizer, except that a text holding MERGE gets its second token changed: what a
    tokenizer that merges the prompt's last token with the answer looks like to the collator."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __setattr__(self, name, value):
        if name == "tokenizer":
            object.__setattr__(self, name, value)
        else:
            setattr(self.tokenizer, name, value)

    def __call__(self, texts, **kwargs):
        out = self.tokenizer(texts, **kwargs)
        for row, text in enumerate(texts):
            if "MERGE" in text:
                out["input_ids"][row][1] += 1
        return out


def test_an_answer_merged_into_the_prompt_is_an_error_naming_the_record(tiny):
    examples = _examples()
    examples[1] = Example(
        id="r1", question=examples[1].question, answer="MERGE here", image=examples[1].image
    )
    collator = Collator(tiny, template="v1")
    collator.tokenizer = _MergingTokenizer(collator.tokenizer)
    with pytest.raises(UnmirageError, match="merges the prompt's last token") as caught:
        collator(examples)
    assert "r1" in str(caught.value)
    examples[1] = _examples()[1]
    assert collator(examples)["labels"].shape[0] == 3
