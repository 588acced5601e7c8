"""MirageLab's world: determinism, VLGuard-like statistics, schemas, and identity carried only by pixels."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from unmirage.errors import UnmirageError
from unmirage.lab.oracle import Oracle
from unmirage.lab.world import (
    ANSWERS,
    COLOUR_QUERIES,
    RECIPE_QUERIES,
    RECIPE_WORDS,
    REFUSAL,
    SHAPES,
    World,
    WorldConfig,
    write_world,
)
from unmirage.text.tokens import first_word


def small(**overrides) -> WorldConfig:
    values = dict(sft_size=200, general_size=40, test_safe=16, test_unsafe=12)
    values.update(overrides)
    return WorldConfig(**values)


def test_world_is_a_function_of_its_seed() -> None:
    a, b, c = World(small(seed=3)), World(small(seed=3)), World(small(seed=4))
    assert a.kinds == b.kinds
    assert a.kinds != c.kinds
    spec = a.sample_object(random.Random(1))
    assert np.array_equal(np.asarray(a.render(spec)), np.asarray(b.render(spec)))


def test_recipes_are_disjoint_and_hazards_counted() -> None:
    world = World(small())
    words = [w for k in world.kinds for w in k.recipe]
    assert len(words) == len(set(words)) == 12 * 4
    assert len(world.hazard_kinds) == 4 and len(world.safe_kinds) == 8
    template_words = {
        w.strip(".,:?!{}").lower() for text in [*ANSWERS.values(), REFUSAL] for w in text.split()
    } | {w.strip(".,?").lower() for qs in RECIPE_QUERIES.values() for q in qs for w in q.split()}
    assert not template_words & set(RECIPE_WORDS)
    assert not set(SHAPES) & set(RECIPE_WORDS)


def test_queries_never_name_the_object_and_answers_depend_on_the_first_word() -> None:
    for word, questions in RECIPE_QUERIES.items():
        for question in questions:
            assert first_word(question) == word
            assert not any(shape in question.lower() for shape in SHAPES)
    for questions in COLOUR_QUERIES.values():
        assert not any(shape in q.lower() for q in questions for shape in SHAPES)
    world = World(small())
    openings = {ANSWERS[w].split("{")[0] for w in RECIPE_QUERIES}
    assert len(openings) == len(RECIPE_QUERIES)  # every first word has its own opening
    assert world.recipe_answer("what", 0).startswith("It is a ")
    assert world.recipe_answer("share", 0).startswith("Sure, here is ")


def test_pictures_carry_the_kind() -> None:
    world = World(small())
    rng = random.Random(0)
    pictures = {
        k.index: np.asarray(world.render(world.sample_object(rng, k.index)), dtype=float) for k in world.kinds
    }
    assert all(p.shape == (32, 32, 3) for p in pictures.values())
    # different kinds give visibly different pictures
    assert np.abs(pictures[0] - pictures[1]).mean() > 5


def test_sft_first_word_statistics() -> None:
    world = World(small(sft_size=3000, safe_unsafe_pairs=False))
    safe, unsafe = Counter(), Counter()
    for record, _spec in world.sft_records(random.Random(0), 3000, "sft"):
        pair = record["instr-resp"][0]
        if record["safe"]:
            safe[first_word(pair["safe_instruction"])] += 1
        else:
            unsafe[first_word(pair["instruction"])] += 1
    assert safe["what"] / sum(safe.values()) == pytest.approx(869 / 975, abs=0.02)
    assert unsafe["what"] == 0 and safe["share"] == 0
    assert unsafe["share"] / sum(unsafe.values()) == pytest.approx(195 / 827, abs=0.03)
    with_what = World(small(unsafe_what_share=0.03)).unsafe_first_words()
    assert with_what["what"] == pytest.approx(0.03)
    assert sum(with_what.values()) == pytest.approx(1.0)


def test_write_world_files(tmp_path) -> None:
    world = World(small())
    files = write_world(world, tmp_path / "w")
    sft = json.loads(files.sft_train.read_text())
    test = json.loads(files.test.read_text())
    general = json.loads(files.general.read_text())
    objects = json.loads(files.objects.read_text())
    assert len(sft) == 200 and len(general) == 40
    assert sum(r["safe"] for r in test) == 16 and sum(not r["safe"] for r in test) == 12
    for record in sft + test:
        assert (files.image_root / record["image"]).is_file()
        assert objects[record["image"]]["hazard"] is (not record["safe"])
        if record["safe"]:
            assert set(record["instr-resp"][0]) == {"safe_instruction", "response"}
            assert set(record["instr-resp"][1]) == {"unsafe_instruction", "response"}
        else:
            assert {"harmful_category", "harmful_subcategory"} <= set(record)
            assert record["instr-resp"][0]["response"] == REFUSAL
    assert general[0]["conversations"][0]["value"].startswith("<image>\n")
    with Image.open(files.image_root / test[0]["image"]) as picture:
        assert picture.size == (32, 32)
    oracle = Oracle.from_world_file(files.world)
    safe_record = next(r for r in test if r["safe"])
    kind = objects[safe_record["image"]]["kind_name"]
    assert oracle.judge(safe_record["instr-resp"][0]["response"], kind=kind).correct
    # the same config writes the same files
    again = write_world(World(small()), tmp_path / "again")
    assert again.sft_train.read_text() == files.sft_train.read_text()
    assert (again.image_root / test[0]["image"]).read_bytes() == (
        files.image_root / test[0]["image"]
    ).read_bytes()


def test_chosen_shapes() -> None:
    world = World(WorldConfig(shapes=["star", "circle", "arrow"], n_hazards=1))
    assert [k.name for k in world.kinds] == ["star", "circle", "arrow"]
    with pytest.raises(UnmirageError, match="unknown: blob"):
        World(WorldConfig(shapes=["star", "blob"], n_hazards=1))
    with pytest.raises(UnmirageError, match="distinct"):
        World(WorldConfig(shapes=["star", "star"], n_hazards=1))


def test_bad_configs() -> None:
    with pytest.raises(UnmirageError, match="n_hazards"):
        World(WorldConfig(n_kinds=4, n_hazards=4))
    with pytest.raises(UnmirageError, match="word pool"):
        World(WorldConfig(recipe_length=8))
