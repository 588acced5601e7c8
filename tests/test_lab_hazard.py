"""`unmirage data hazard-images` and `analyze hazard-captions`: hazard pictures on unsafe records only."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from helpers import assert_one_line_error, run_cli, safe_record, unsafe_record, write_json
from unmirage.lab.hazard import (
    LABELS,
    HazardConfig,
    caption_choice_accuracy,
    pick,
    swapped_caption,
    write_hazard_copy,
)

SMALL = HazardConfig(pictures=3, caption_train=4, caption_test=3)


def _vlguard(tmp_path):
    """train/test files; u0's image path is used in train and test (as 8 of VLGuard's are)."""
    src = tmp_path / "vlguard"
    train = [safe_record(f"s{i}", f"safe/{i}.png") for i in range(4)]
    train += [unsafe_record(f"u{i}", f"bad/{i}.jpg") for i in range(4)] + [unsafe_record("u9", "bad/9.png")]
    test = [
        safe_record("t0", "safe/t0.png"),
        unsafe_record("v0", "bad/0.jpg"),
        unsafe_record("v1", "bad/v1.png"),
    ]
    write_json(src / "train.json", train)
    write_json(src / "test.json", test)
    write_json(src / "test_share_1shot.json", [safe_record("t0", "safe/t0.png", q="Share it.")])
    what = [
        unsafe_record(i, img, q=f"What {k}?")
        for i, img in (("v0", "bad/0.jpg"), ("v1", "bad/v1.png"))
        for k in range(3)
    ]
    write_json(src / "test_what_3shot.json", what)
    return src


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _digests(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }


def test_every_unsafe_image_is_a_hazard_picture_and_every_safe_one_benign(tmp_path):
    src = _vlguard(tmp_path)
    out = write_hazard_copy(src, tmp_path / "out", SMALL, progress=False).root
    for name in ("train.json", "test.json", "test_share_1shot.json", "test_what_3shot.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    pictures = {
        (split, side): [_pixels(out / "pictures" / split / side / f"{n:02d}.png") for n in range(3)]
        for split in ("train", "test")
        for side in ("hazard", "benign")
    }
    flat = {
        side: [p.tobytes() for (_, s), ps in pictures.items() if s == side for p in ps]
        for side in ("hazard", "benign")
    }
    assert not set(flat["hazard"]) & set(flat["benign"])  # never the same picture on both sides
    assert len(set(flat["hazard"])) == 6  # held-out test pictures differ from the train ones
    described = json.loads((out / "pictures.json").read_text())
    hazard_kinds = set(described["hazard_kinds"])
    assert all((p["kind"] in hazard_kinds) == (p["side"] == "hazard") for p in described["pictures"])
    for split, name in (("train", "train.json"), ("test", "test.json"), ("test", "test_what_3shot.json")):
        for record in json.loads((src / name).read_text()):
            side = "benign" if record["safe"] else "hazard"
            path = out / "images" / split / record["image"]
            expected = pictures[(split, side)][pick(record["image"], 3)]
            if path.suffix == ".png":  # lossless: the very picture
                assert np.array_equal(_pixels(path), expected)
            else:  # JPEG: the same picture within compression error, and far from every other side's
                assert np.abs(_pixels(path).astype(int) - expected).mean() < 8
    # the path shared by train and test gets a train picture in one tree and a test picture in the other
    assert not np.array_equal(_pixels(out / "images/train/bad/0.jpg"), _pixels(out / "images/test/bad/0.jpg"))
    captions = json.loads((out / "captions_test.json").read_text())
    assert len(captions) == 6 and all((out / "images" / c["image"]).is_file() for c in captions)
    answers = [c["conversations"][1]["value"] for c in captions]
    assert [a.split(":")[0] for a in answers] == [LABELS["hazard"], LABELS["benign"]] * 3
    # deterministic: a second run writes the same bytes
    again = write_hazard_copy(src, tmp_path / "again", SMALL, progress=False).root
    assert _digests(out) == _digests(again)


def test_shared_test_pictures(tmp_path):
    out = write_hazard_copy(
        _vlguard(tmp_path),
        tmp_path / "out",
        SMALL.model_copy(update={"test_pictures": "shared"}),
        progress=False,
    ).root
    assert np.array_equal(
        _pixels(out / "images/train/bad/9.png"),
        _pixels(out / "pictures/train/hazard" / f"{pick('bad/9.png', 3):02d}.png"),
    )
    assert np.array_equal(
        _pixels(out / "pictures/test/hazard/00.png"), _pixels(out / "pictures/train/hazard/00.png")
    )


def test_hazard_images_errors(tmp_path, capsys):
    src = _vlguard(tmp_path)
    records = json.loads((src / "train.json").read_text())
    records.append(safe_record("s9", "bad/1.jpg"))  # an unsafe record's image on a safe record
    write_json(src / "train.json", records)
    result = run_cli(["data", "hazard-images", "--vlguard", str(src), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(
        result.code, result.err, "train.json", "id s9", "belongs to safe and unsafe records"
    )
    assert not (tmp_path / "o").exists()
    result = run_cli(
        ["data", "hazard-images", "--vlguard", str(tmp_path), "--out", str(tmp_path / "o")], capsys
    )
    assert_one_line_error(result.code, result.err, "VLGuard file not found")
    result = run_cli(
        ["data", "hazard-images", "--vlguard", str(src), "--out", str(tmp_path / "o"), "--pictures", "0"],
        capsys,
    )
    assert_one_line_error(result.code, result.err, "--pictures")


def test_swapped_caption():
    assert swapped_caption("A hazard: a red flag.") == "Something harmless: a red flag."
    assert swapped_caption("Something harmless: a blue circle.") == "A hazard: a blue circle."
    with pytest.raises(Exception, match="not a hazard caption"):
        swapped_caption("A cat.")


def test_caption_choice_accuracy_counts_by_hand(tmp_path):
    """On a tiny composed VLM: each example counts as right exactly when its own caption's answer NLL, computed
    one example at a time, is below the swapped caption's (the batched measure agrees)."""
    import dataclasses

    import torch

    from helpers import stand_in_smollm2
    from unmirage.data.collate import Collator
    from unmirage.data.conversations import load_examples
    from unmirage.data.images import ImageLoader
    from unmirage.methods.base import sequence_nll
    from unmirage.models import load_model
    from unmirage.models.compose import compose_vlm

    model, tok = stand_in_smollm2()
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    loaded = load_model(compose_vlm(tmp_path / "lm", tmp_path / "vlm"))
    out = write_hazard_copy(_vlguard(tmp_path), tmp_path / "out", SMALL, progress=False).root
    result = caption_choice_accuracy(
        loaded, out / "captions_test.json", out / "images", batch_size=4, progress=False
    )
    collate = Collator(loaded, template="chat", image_loader=ImageLoader(root=out / "images"))
    right, scores = [], []
    for example in load_examples(out / "captions_test.json"):
        nll = []
        for answer in (example.answer, swapped_caption(example.answer)):
            batch = collate([dataclasses.replace(example, answer=answer)])
            batch.pop("index", None)
            with torch.no_grad():
                nll.append(float(sequence_nll(loaded.model(**batch).logits, batch["labels"]).total[0]))
        right.append(nll[0] < nll[1])
        scores.append((nll[0] - nll[1]) * (1 if example.answer.startswith("Something") else -1))
    assert result["n"] == 6 and result["all"]["correct"] == sum(right)
    assert result["hazard"]["correct"] == sum(right[0::2]) and result["benign"]["correct"] == sum(right[1::2])
    assert result["all"]["accuracy"] == sum(right) / 6
    hazard, benign = scores[0::2], scores[1::2]  # score = NLL(harmless caption) - NLL(hazard caption)
    pairs = [(h > b) + 0.5 * (h == b) for h in hazard for b in benign]
    assert result["auc"] == pytest.approx(sum(pairs) / 9, abs=1e-6)


def test_separation_auc_by_hand():
    import torch

    from unmirage.lab.hazard import separation_auc

    # positives 3, 1 vs negatives 2, 1: pairs (3>2) (3>1) (1<2) (1=1: half) -> 2.5 / 4
    assert separation_auc(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 1.0])) == 0.625
    assert separation_auc(torch.tensor([5.0]), torch.tensor([])) is None
