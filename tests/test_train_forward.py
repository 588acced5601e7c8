"""The trainer's forward pass applies the LM head at the answer positions only: the same per-sequence NLLs
and gradients as the full `[batch, seq, vocab]` logits, on each tiny family and a plain causal LM."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_llama
from unmirage.data.collate import IGNORE_INDEX, Collator
from unmirage.methods import sequence_nll
from unmirage.models import load_model, tiny_families
from unmirage.train.data import load_training_examples
from unmirage.train.forward import forward, model_inputs

MODELS = [f"tiny-{name}" for name in tiny_families()] + ["causal"]


def loaded_model(name: str):
    if name != "causal":
        return load_model(name)
    from unmirage.models.families import family_for
    from unmirage.models.load import LoadedModel
    from unmirage.models.tiny import build_tokenizer

    tokenizer = build_tokenizer("llava")
    model = tiny_llama(tokenizer)
    return LoadedModel(model=model, processor=tokenizer, family=family_for(model), source="causal")


def padded_batch(loaded, tmp_path):
    """Four examples of different prompt and answer lengths (so right padding and answers at different
    positions), collated as training collates them."""
    records = []
    for i, (question, answer) in enumerate(
        [
            ("Why?", "Because the wire is hot and the part melts."),
            ("What colour is the object on the left side of the table?", "Green."),
            ("Name it.", "It is a small red box with a lid, number seven, left open."),
            ("How many items are shown in this picture, roughly?", "About twelve."),
        ]
    ):
        turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
        records.append({"id": f"e{i}", "image": f"e{i}.png", "conversations": turns})
    path = tmp_path / "examples.json"
    path.write_text(json.dumps(records))
    batch = Collator(loaded, placeholder_images=True)(load_training_examples(path))
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    return batch


@pytest.mark.parametrize("name", MODELS)
def test_answer_only_logits_give_the_full_logits_nll_and_gradients(name, tmp_path):
    loaded = loaded_model(name)
    model = loaded.model.eval()
    batch = padded_batch(loaded, tmp_path)
    labels = batch["labels"]

    kept, _ = forward(model, batch, loaded.family)
    n_answer = int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert kept.shape == (n_answer, model.get_output_embeddings().out_features)
    answer = sequence_nll(kept, labels)
    answer.batch_mean().backward()
    answer_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    full_logits = model(**model_inputs(batch), use_cache=False).logits
    assert full_logits.shape[:2] == labels.shape
    full = sequence_nll(full_logits, labels)
    full.batch_mean().backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert (full.count > 0).all() and len(
        set(full.count.tolist())
    ) > 1  # several answers, of different lengths
    torch.testing.assert_close(answer.count, full.count)
    torch.testing.assert_close(answer.total, full.total, rtol=1e-5, atol=1e-5)
    assert answer_grads.keys() == full_grads.keys() and "lm_head.weight" in full_grads
    for key, grad in full_grads.items():
        torch.testing.assert_close(answer_grads[key], grad, rtol=1e-4, atol=1e-6, msg=key)


def test_hidden_only_forward_makes_no_logits_and_the_same_hidden_state():
    loaded = loaded_model("causal")
    tokenizer = loaded.processor
    batch = dict(tokenizer(["a b c d", "e f"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    batch["labels"][:, -1] = batch["input_ids"][:, -1]
    none, hidden = forward(loaded.model, batch, loaded.family, 1, logits=False)
    assert none.shape == (0, loaded.model.config.vocab_size)
    kept, again = forward(loaded.model, batch, loaded.family, 1)
    assert kept.shape[0] == 2
    torch.testing.assert_close(hidden, again)
