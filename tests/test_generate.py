from __future__ import annotations

import dataclasses
import json

import pytest
from PIL import Image

from helpers import png
from unmirage.errors import UnmirageError
from unmirage.generate import BatchedGenerator, GenerationConfig, GenItem, merge_shards, run_generation
from unmirage.models import load_model, tiny_families

QUESTIONS = [
    "What is this?",
    "Share the recipe of the object in the picture.",
    "How?",
    "Can you describe the colours and the shapes you see in the image in detail?",
    "Please tell me.",
    "Explain what happens here.",
    "Tell me the recipe.",
    "What?",
]


@pytest.fixture(scope="module", params=tiny_families())
def tiny(request):
    return load_model(f"tiny-{request.param}", tiny_sizes={"seed": 1})


def _items(n=len(QUESTIONS)):
    return [
        GenItem(
            id=f"q{i}",
            question=QUESTIONS[i % len(QUESTIONS)],
            image=Image.new("RGB", (32, 32), (25 * i, 80, 160)),
            meta={"category": "c"},
        )
        for i in range(n)
    ]


def test_batched_equals_one_at_a_time(tiny):
    items = _items()
    batched = BatchedGenerator(tiny, GenerationConfig(max_new_tokens=12, batch_size=4))(items)
    single = BatchedGenerator(
        tiny, GenerationConfig(max_new_tokens=12, batch_size=1, bucket_by_length=False)
    )(items)
    assert [r["answer"] for r in batched] == [r["answer"] for r in single]
    assert [r["id"] for r in batched] == [i.id for i in items]
    assert all(r["category"] == "c" and r["template"] == "v1" for r in batched)


def test_resume_after_kill_gives_identical_file(tiny, tmp_path):
    items = _items()
    gen = BatchedGenerator(tiny, GenerationConfig(max_new_tokens=6, batch_size=3))
    full = tmp_path / "full.jsonl"
    run_generation(gen, items, full, progress=False)
    lines = full.read_text().splitlines()
    assert len(lines) == len(items)

    # simulate a kill: first batch complete, second batch torn in the middle of a line
    killed = tmp_path / "killed.jsonl"
    killed.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])
    run_generation(gen, items, killed, progress=False)
    assert killed.read_text().splitlines() == lines
    run_generation(gen, items, killed, progress=False)  # nothing left to do: no duplicates
    assert killed.read_text().splitlines() == lines


def test_assistant_prefix_and_placeholder(tiny):
    cfg = GenerationConfig(
        max_new_tokens=4, batch_size=2, assistant_prefix="Sure, here is", placeholder_images=True
    )
    rows = BatchedGenerator(tiny, cfg)([GenItem(id="a", question="What is it?")])
    assert rows[0]["answer"].startswith("Sure, here is")
    assert rows[0]["placeholder_image"] is True
    with pytest.raises(UnmirageError, match="placeholder_images"):
        BatchedGenerator(tiny, GenerationConfig(max_new_tokens=2))(
            _items(1) + [GenItem(id="b", question="Q")]
        )


def test_duplicate_keys_and_bad_config(tiny):
    with pytest.raises(UnmirageError, match="duplicate"):
        BatchedGenerator(tiny).plan([GenItem(id="a", question="q"), GenItem(id="a", question="r")])
    with pytest.raises(UnmirageError, match="max_new_tokens"):
        BatchedGenerator(tiny, GenerationConfig(max_new_tokens=0))


def test_shards_merge_in_item_order(tiny, tmp_path):
    items = _items()
    gen = BatchedGenerator(tiny, GenerationConfig(max_new_tokens=3, batch_size=2))
    out = tmp_path / "g.jsonl"
    for rank in range(2):
        run_generation(gen, items, out, progress=False, rank=rank, world=2)
    merge_shards(out, 2, items)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [i.id for i in items]
    assert rows == gen(items)
    assert not list(tmp_path.glob("*.rank*"))


def test_every_kv_cache_gives_the_same_answers(tiny):
    """transformers' static cache (the default) and its dynamic cache agree with each other, batched, and with
    one prompt at a time."""
    items = _items()
    answers = {
        cache: [
            r["answer"]
            for r in BatchedGenerator(
                tiny, GenerationConfig(max_new_tokens=10, batch_size=4, cache_implementation=cache)
            )(items)
        ]
        for cache in ("static", None)
    }
    assert GenerationConfig().cache_implementation == "static"
    single = BatchedGenerator(
        tiny, GenerationConfig(max_new_tokens=10, batch_size=1, cache_implementation=None)
    )
    assert answers["static"] == answers[None] == [r["answer"] for r in single(items)]


def _hand_built(source, config, loader):
    """The generator as commands built it before `make_answerer`: load_model + ImageLoader + BatchedGenerator."""
    return BatchedGenerator(load_model(source, dtype="float32"), config, image_loader=loader)


def test_make_answerer_answers_as_the_hand_built_generator(tmp_path):

    from unmirage.data.images import ImageLoader
    from unmirage.generate import make_answerer
    from unmirage.placeholder import placeholder_size

    for i in range(len(QUESTIONS)):
        png(tmp_path / "img" / f"{i}.png", size=(24, 16), color=(30 * i, 90, 200 - 20 * i))
    items = [GenItem(id=f"q{i}", question=q, image=f"{i}.png") for i, q in enumerate(QUESTIONS)]
    config = GenerationConfig(max_new_tokens=8, batch_size=3)
    answerer = make_answerer("tiny-llava", config, image_root=tmp_path / "img", dtype="float32", device="cpu")
    assert type(answerer) is BatchedGenerator and answerer.config is config
    expected = _hand_built("tiny-llava", config, ImageLoader(root=tmp_path / "img"))(items)
    got = answerer(items)
    assert got == expected
    assert len({r["answer"] for r in got}) > 1  # the images and questions reach the model

    # a model already loaded is used as it is; placeholder images as mining made them (a loader that greys
    # every image) equal an item without an image under `placeholder_images`
    grey = dataclasses.replace(config, placeholder_images=True)
    reused = make_answerer(answerer.loaded, grey)
    assert reused.loaded is answerer.loaded
    loader = ImageLoader(placeholder=placeholder_size(answerer.loaded.processor))
    before = BatchedGenerator(answerer.loaded, config, image_loader=loader)(items)
    after = reused([dataclasses.replace(item, image=None) for item in items])
    assert [r["answer"] for r in after] == [r["answer"] for r in before]
    assert all(r["placeholder_image"] for r in after)


def test_make_answerer_rejects_an_unknown_backend():
    from unmirage.generate import make_answerer

    with pytest.raises(UnmirageError, match="unknown generation backend 'tgi'"):
        make_answerer("tiny-llava", backend="tgi")
