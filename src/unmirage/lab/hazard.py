"""Hazard and benign pictures for a VLGuard-schema data set: the harm is in the image.

`write_hazard_copy` copies the VLGuard files of a folder unchanged and writes, for each split, an image tree in
which every image path of an unsafe record holds a *hazard* picture and every image path of a safe record a
*benign* one. The pictures are MirageLab's (`unmirage.lab.world`): one object of a kind on a noisy
background; hazard pictures show the world's hazard kinds, benign ones its other kinds, so no picture can be
on both sides (also checked on the pixels). Each side has a small set of `pictures` distinct pictures per
split; a record's picture is chosen by a hash of its image path, so the same path gets the same picture in
every file of a split (test.json and its attack files agree). Test pictures are drawn apart from the train
ones (`test_pictures="heldout"`, the default) or are the train ones (`"shared"`).

Layout of the output folder (`--image-root OUT/images/train` for training, `OUT/images/test` for test files):

    train.json, test.json, ...        the input files, byte for byte
    images/{train,test}/<image path>  the record's picture, in the format its extension names
    pictures/{split}/{side}/NN.png    the distinct pictures
    captions_train.json, captions_test.json, images/captions/...   projector pretraining / its measurement
    pictures.json, manifest.json

The caption files (LLaVA conversation format) pair fresh pictures of every kind with "What is in this
picture?" and the answer `"A hazard: a red star."` or `"Something harmless: a blue circle."`; they teach the
composed VLM's projector (and vision tower) to pass the difference to the language model.
`caption_choice_accuracy` then measures whether the model can tell the two apart: for each held-out picture,
the caption with the right label must be more likely (teacher-forced NLL) than the same caption with the
other label.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydantic import Field

from unmirage.config import StrictModel
from unmirage.errors import UnmirageError

if TYPE_CHECKING:
    from unmirage.lab.world import World
    from unmirage.models import LoadedModel

SIDES = ("hazard", "benign")
SPLITS = ("train", "test")
DEFAULT_FILES = ("train.json", "test.json", "test_share_1shot.json", "test_what_3shot.json")
CAPTION_QUESTION = "What is in this picture?"
LABELS = {"hazard": "A hazard", "benign": "Something harmless"}
CAPTIONS = {"train": "captions_train.json", "test": "captions_test.json"}
JPEG_SUFFIXES = (".jpg", ".jpeg")


class HazardConfig(StrictModel):
    """What decides the pictures (the same config always gives the same files)."""

    seed: int = Field(0, description="Seed of the world (kinds, hazards) and of every picture.")
    image_size: int = Field(32, ge=16, le=256, description="Side of the pictures (the composed VLM's: 32).")
    pictures: int = Field(8, ge=1, le=999, description="Distinct pictures per side and split.")
    test_pictures: str = Field("heldout", pattern="^(heldout|shared)$", description="heldout or shared.")
    caption_train: int = Field(512, ge=1, description="Caption examples per side for projector training.")
    caption_test: int = Field(100, ge=1, description="Held-out caption examples per side (the measurement).")


@dataclass(frozen=True)
class HazardFiles:
    """What `write_hazard_copy` wrote."""

    root: Path
    files: list[Path]
    image_roots: dict[str, Path]
    captions: dict[str, Path]
    counts: dict[str, Any]


def _world(config: HazardConfig) -> Any:
    from unmirage.lab.world import World, WorldConfig

    return World(WorldConfig(seed=config.seed, image_size=config.image_size))


def picture_specs(world: World, config: HazardConfig) -> dict[tuple[str, str], list[Any]]:
    """`(split, side) -> ObjectSpec`s: `pictures` per side, hazard kinds vs the other kinds, cycling through
    the kinds so that every kind of a side appears."""
    specs: dict[tuple[str, str], list[Any]] = {}
    for split in SPLITS:
        if split == "test" and config.test_pictures == "shared":
            specs.update({("test", side): specs[("train", side)] for side in SIDES})
            continue
        rng = random.Random(f"hazard-pictures-{config.seed}-{split}")
        for side in SIDES:
            kinds = world.hazard_kinds if side == "hazard" else world.safe_kinds
            specs[(split, side)] = [
                world.sample_object(rng, kinds[i % len(kinds)].index) for i in range(config.pictures)
            ]
    return specs


def pick(image: str, count: int) -> int:
    """The picture (0..count-1) for an image path: a hash of the path, the same in every run and file."""
    return int.from_bytes(hashlib.sha256(image.encode("utf-8")).digest()[:8], "big") % count


def _save(picture: Image.Image, path: Path) -> None:
    """Write `picture` in the format `path`'s extension names (JPEG for .jpg/.jpeg, else PNG), atomically."""
    from unmirage.runs import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    jpeg = path.suffix.lower() in JPEG_SUFFIXES
    with atomic_open(path, "wb", encoding=None) as handle:
        picture.save(handle, format="JPEG" if jpeg else "PNG", **({"quality": 95} if jpeg else {}))


def check_sides_apart(pictures: dict[tuple[str, str], list[Image.Image]]) -> None:
    """No hazard picture equals a benign one, pixel for pixel (in any split)."""
    digests = {
        side: {
            hashlib.sha256(p.tobytes()).hexdigest()
            for (_, s), ps in pictures.items()
            if s == side
            for p in ps
        }
        for side in SIDES
    }
    if digests["hazard"] & digests["benign"]:
        raise UnmirageError("a hazard picture equals a benign one; choose another seed")


def caption_records(world: World, config: HazardConfig, split: str) -> list[tuple[dict[str, Any], Any]]:
    """(conversation record, ObjectSpec) for the caption file of `split`: per side `caption_train` or
    `caption_test` fresh pictures of its kinds, interleaved hazard / benign."""
    from unmirage.data.conversations import single_turn

    per_side = config.caption_train if split == "train" else config.caption_test
    rng = random.Random(f"hazard-captions-{config.seed}-{split}")
    rows = []
    for i in range(per_side):
        for side in SIDES:
            kinds = world.hazard_kinds if side == "hazard" else world.safe_kinds
            spec = world.sample_object(rng, rng.choice(kinds).index)
            image = f"captions/{split}/{side}_{i:05d}.png"
            answer = caption(side, spec.colour, world.kinds[spec.kind].name)
            rows.append(
                (single_turn(f"{split}-{side}-{i:05d}", image, CAPTION_QUESTION, answer).to_json(), spec)
            )
    return rows


def caption(side: str, colour: str, kind: str) -> str:
    """The caption of a picture: its label (hazard or harmless), then what it shows."""
    return f"{LABELS[side]}: a {colour} {kind}."


def swapped_caption(answer: str) -> str:
    """The same caption with the other label (what `caption_choice_accuracy` compares against)."""
    for side, other in zip(SIDES, reversed(SIDES)):
        if answer.startswith(LABELS[side] + ":"):
            return LABELS[other] + answer[len(LABELS[side]) :]
    raise UnmirageError(f"not a hazard caption: {answer!r}")


def write_hazard_copy(
    vlguard: str | os.PathLike,
    out: str | os.PathLike,
    config: HazardConfig | None = None,
    *,
    files: Sequence[str] = DEFAULT_FILES,
    overwrite: bool = False,
    progress: bool = True,
) -> HazardFiles:
    """Copy the VLGuard `files` of folder `vlguard` and write their hazard/benign image trees and the caption
    files to `out` (see the module doc). Every input is validated before anything is written; the folder is
    claimed first and `manifest.json` written last."""
    from tqdm.auto import tqdm

    from unmirage.data.vlguard import load_vlguard
    from unmirage.outputs import claim_folder, file_identity
    from unmirage.runs import atomic_open, atomic_write_json, sha256_file, write_manifest

    config = config or HazardConfig()
    source, out = Path(vlguard), Path(out)
    inputs = [source / name for name in files]
    for path in inputs:
        if not path.is_file():
            raise UnmirageError("VLGuard file not found", file=path)
    # each split's image path -> side; a path used by safe and unsafe records is an error
    sides: dict[str, dict[str, str]] = {split: {} for split in SPLITS}
    for path in inputs:
        split = "train" if path.name.startswith("train") else "test"
        data = load_vlguard(path, kind="plain" if split == "train" else "auto", allow_duplicate_ids=True)
        for record in data.records:
            side = "benign" if record.safe else "hazard"
            image = str(record.image)
            parts = PurePosixPath(image).parts
            if not image.strip() or PurePosixPath(image).is_absolute() or ".." in parts or "\\" in image:
                raise UnmirageError(
                    f"image path {image!r} must be relative, with '/' and no '..'",
                    file=path,
                    record=f"id {record.id}",
                )
            if sides[split].setdefault(image, side) != side:
                raise UnmirageError(
                    f"image {image!r} belongs to safe and unsafe records",
                    file=path,
                    record=f"id {record.id}",
                )
    identity = {"inputs": [file_identity(p) for p in inputs], "config": config.model_dump()}
    claim_folder(out, command="data hazard-images", identity=identity, overwrite=overwrite, inputs=inputs)
    world = _world(config)
    specs = picture_specs(world, config)
    pictures = {key: [world.render(s) for s in value] for key, value in specs.items()}
    check_sides_apart(pictures)
    described: dict[str, Any] = {"hazard_kinds": [k.name for k in world.hazard_kinds], "pictures": []}
    for (split, side), images in pictures.items():
        for number, (image, spec) in enumerate(zip(images, specs[(split, side)])):
            path = out / "pictures" / split / side / f"{number:02d}.png"
            _save(image, path)
            described["pictures"].append(
                {"split": split, "side": side, "number": number, "kind": world.kinds[spec.kind].name}
                | {"colour": spec.colour, "path": str(path.relative_to(out)), "sha256": sha256_file(path)}
            )
    roots = {split: out / "images" / split for split in SPLITS}
    used: dict[str, int] = {}
    for split in SPLITS:
        for image, side in tqdm(sorted(sides[split].items()), desc=f"{split} images", disable=not progress):
            number = pick(image, config.pictures)
            _save(pictures[(split, side)][number], roots[split] / image)
            used[f"{split}_{side}"] = used.get(f"{split}_{side}", 0) + 1
    captions = {}
    for split in SPLITS:
        rows = caption_records(world, config, split)
        for record, spec in rows:
            _save(world.render(spec), out / "images" / record["image"])
        captions[split] = out / CAPTIONS[split]
        atomic_write_json(captions[split], [record for record, _ in rows])
    copies = []
    for path in inputs:
        with open(path, "rb") as source_file, atomic_open(out / path.name, "wb", encoding=None) as handle:
            shutil.copyfileobj(source_file, handle)
        copies.append(out / path.name)
    atomic_write_json(out / "pictures.json", described)
    counts = {
        "image_paths": used,
        "captions": {s: 2 * (config.caption_train if s == "train" else config.caption_test) for s in SPLITS},
    }
    write_manifest(
        out,
        command="data hazard-images",
        identity=identity,
        config=config.model_dump() | {"files": list(files)},
        inputs=inputs,
        outputs=[*copies, *captions.values(), out / "pictures.json"],
        seed=config.seed,
        counts=counts,
        image_roots={split: str(root) for split, root in roots.items()},
    )
    return HazardFiles(root=out, files=copies, image_roots=roots, captions=captions, counts=counts)


def separation_auc(positive: Any, negative: Any) -> float | None:
    """P(a random positive scores above a random negative), ties counting half (the Mann-Whitney AUC); None
    when a side is empty. Unlike the choice accuracy it ignores a constant preference for one label."""
    if len(positive) == 0 or len(negative) == 0:
        return None
    diff = positive.reshape(-1, 1) - negative.reshape(1, -1)
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def caption_choice_accuracy(
    loaded: LoadedModel,
    captions: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    template: str = "chat",
    batch_size: int = 16,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """For each caption example: is the caption with the right label more likely (lower summed answer NLL,
    teacher-forced) than the same caption with the other label? Accuracy per side and overall, with Wilson
    intervals, the mean NLL margin (wrong - right, nats) and `auc`: how well the score NLL(harmless caption)
    - NLL(hazard caption) ranks hazard pictures above benign ones, whatever the model's label bias."""
    import dataclasses

    import torch
    from tqdm.auto import tqdm

    from unmirage.data.collate import Collator
    from unmirage.data.conversations import load_examples
    from unmirage.data.images import ImageLoader
    from unmirage.methods.base import sequence_nll
    from unmirage.stats import wilson_interval
    from unmirage.train.forward import forward

    examples = load_examples(captions, multi_turn="first")[:limit]
    if not examples:
        raise UnmirageError("no caption examples", file=captions)
    collate = Collator(loaded, template=template, image_loader=ImageLoader(root=Path(image_root)))
    right, wrong = [], []
    loaded.model.eval()
    for start in tqdm(range(0, len(examples), batch_size), desc="captions", disable=not progress):
        chunk = examples[start : start + batch_size]
        for answers, store in (
            (chunk, right),
            ([dataclasses.replace(e, answer=swapped_caption(e.answer)) for e in chunk], wrong),
        ):
            batch = collate(answers)
            batch.pop("index", None)
            batch = {k: v.to(loaded.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with torch.inference_mode():
                logits, _ = forward(loaded.model, batch, loaded.family)
            store.extend(sequence_nll(logits, batch["labels"]).total.tolist())
    margin = torch.tensor(wrong) - torch.tensor(right)
    is_hazard = torch.tensor([e.answer.startswith(LABELS["hazard"] + ":") for e in examples])
    says_hazard = torch.where(is_hazard, margin, -margin)  # NLL(harmless caption) - NLL(hazard caption)
    result: dict[str, Any] = {
        "n": len(examples),
        "mean_margin_nats": float(margin.mean()),
        "auc": separation_auc(says_hazard[is_hazard], says_hazard[~is_hazard]),
    }
    for side in (*SIDES, "all"):
        rows = [i for i, e in enumerate(examples) if side == "all" or e.answer.startswith(LABELS[side] + ":")]
        if not rows:
            continue
        correct = int((margin[rows] > 0).sum())
        accuracy = correct / len(rows)
        result[side] = {"n": len(rows), "correct": correct, "accuracy": accuracy}
        result[side]["accuracy_ci"] = list(wilson_interval(accuracy, len(rows)))
    return result


def pretrain_hazard_vision(
    model: str | os.PathLike,
    out: str | os.PathLike,
    config: HazardConfig | None = None,
    *,
    steps: int = 1000,
    held_out: int = 512,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Teach a VLM's vision tower the kinds and colours of the hazard pictures' world (MirageLab's vision
    stage, `lab.pretrain.pretrain_vision`: a linear head on the patch tokens LLaVA feeds its projector), then
    save the whole model to `out` (written under a temporary name, then renamed). Returns the training
    accuracies and the kind / hazard accuracies of the trained head on `held_out` fresh pictures."""
    import torch

    from unmirage.lab.pretrain import VisionStage, feature_layer_tokens, pretrain_vision
    from unmirage.models.convert import prepare_output_dir, publish_dir, staging_dir
    from unmirage.models.load import load_model
    from unmirage.runs import write_manifest

    config = config or HazardConfig()
    out = prepare_output_dir(out, overwrite)
    loaded = load_model(model, dtype="float32")
    if not loaded.multimodal or loaded.family.vision_tower is None:
        raise UnmirageError("the model has no vision tower", file=model)
    world = _world(config)
    stage = VisionStage(steps=steps)
    head: dict[str, Any] = {}
    result = pretrain_vision(loaded, world, stage, seed=config.seed, progress=progress, keep_head=head)
    rng = random.Random(f"hazard-vision-check-{config.seed}")
    specs = [world.sample_object(rng) for _ in range(held_out)]
    pixels = loaded.processor.image_processor(images=[world.render(s) for s in specs], return_tensors="pt")
    with torch.no_grad():
        logits = head["head"](feature_layer_tokens(loaded.model, pixels["pixel_values"]).flatten(1))
    kinds = logits[:, : len(world.kinds)].argmax(-1)
    truth = torch.tensor([s.kind for s in specs])
    hazard = torch.tensor([world.kinds[k].hazard for k in kinds.tolist()])
    hazard_truth = torch.tensor([world.kinds[s.kind].hazard for s in specs])
    result |= {
        "held_out": held_out,
        "held_out_kind_accuracy": float((kinds == truth).float().mean()),
        "held_out_hazard_accuracy": float((hazard == hazard_truth).float().mean()),
    }
    staging = staging_dir(out)
    try:
        loaded.model.save_pretrained(staging)
        loaded.processor.save_pretrained(staging)
        write_manifest(
            staging,
            command="models pretrain-vision",
            config={"model": str(model), "world": config.model_dump(), "vision": stage.model_dump()},
            seed=config.seed,
            vision_pretraining=result,
        )
        publish_dir(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return result
