"""MirageLab's stages, in order: each a function of one seed's `SeedRun`, which runs the toolkit's own
commands in this process with the arguments a user would type (`Runner`, logged to OUT/commands.sh), or the
lab's own steps (the world, the base model, the oracle's scoring). With `resume`, a stage whose outputs are
already there is skipped."""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from unmirage.errors import UnmirageError
from unmirage.lab.config import MODELS, LabConfig, TrainStage
from unmirage.lab.narrative import headline
from unmirage.runs import atomic_write_json, atomic_write_text, normal_permissions
from unmirage.train.recipe import DataSection, Recipe

if TYPE_CHECKING:
    from unmirage.lab.world import World


class Runner:
    """Runs `unmirage` commands in this process, logs them to commands.sh and times every stage."""

    def __init__(self, out: Path, progress: bool = True) -> None:
        self.out = out
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.commands: list[str] = []

    def cli(self, *args: str | os.PathLike, **options: str | os.PathLike | int | float) -> None:
        """`unmirage ARGS --OPTION VALUE ...`, exactly as a user would type it (an option's name is its keyword
        with dashes: `max_new_tokens=32` is `--max-new-tokens 32`); raises UnmirageError on failure."""
        from unmirage.cli.main import app

        flags = [item for key, value in options.items() for item in ("--" + key.replace("_", "-"), value)]
        argv = [str(a) for a in (*args, *flags)]
        self.commands.append("unmirage " + " ".join(shlex.quote(a) for a in argv))
        atomic_write_text(self.out / "commands.sh", "\n".join(self.commands) + "\n")
        try:
            app(args=argv, prog_name="unmirage", standalone_mode=False)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise UnmirageError(f"'unmirage {argv[0]}' exited with status {exc.code}") from None
        except Exception as exc:  # usage errors of click (or typer's copy of it)
            if "click" in type(exc).__module__:
                message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
                raise UnmirageError(f"'unmirage {' '.join(argv[:2])}': {message}") from None
            raise

    @contextmanager
    def stage(self, name: str) -> Any:
        start = time.perf_counter()
        if self.progress:
            print(f"[lab] {name} ...", flush=True)
        yield
        self.timings[name] = round(time.perf_counter() - start, 2)
        if self.progress:
            print(f"[lab] {name}: {self.timings[name]:.1f} s", flush=True)


# ----- stages ----------------------------------------------------------------------------------------------------


def write_sft_files(world_dir: Path, replay_counts: Sequence[int]) -> dict[int, Path]:
    """SFT training files from the VLGuard-schema `sft_train.json`: every pair as a conversation, plus the
    first `n` records of `general.json` for each `n` in `replay_counts` (0 = Posthoc SFT data)."""
    from unmirage.data.conversations import read_conversations, single_turn, write_conversations
    from unmirage.data.vlguard import load_samples

    pairs = [
        single_turn(f"{s.id}-{subset}", s.image, s.question, s.response)
        for subset in ("safe_safes", "safe_unsafes", "unsafes")
        for s in load_samples(world_dir / "sft_train.json", subset)
    ]
    general = read_conversations(world_dir / "general.json")
    files = {}
    for n in replay_counts:
        if n > len(general):
            raise UnmirageError(f"replay {n} exceeds the {len(general)} general records", field="replay")
        path = world_dir / (f"sft_mixed_{n}.json" if n else "sft_posthoc.json")
        write_conversations(path, [*pairs, *general[:n]])
        files[n] = path
    return files


def build_base_model(config: LabConfig, world: World, out: Path, seed: int, progress: bool) -> dict[str, Any]:
    """Tiny LLaVA -> vision pretraining -> base training -> saved to `out` (model + processor)."""
    from unmirage.lab.pretrain import pretrain_vision, train_base
    from unmirage.models import load_model

    sizes = config.model.model_dump()
    sizes.update(image_size=config.world.image_size, seed=seed)
    loaded = load_model("tiny-llava", dtype="float32", tiny_sizes=sizes)
    vision = pretrain_vision(loaded, world, config.vision, seed=seed, progress=progress)
    base = train_base(loaded, world, config.base, seed=seed, template=config.eval.template, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out)
    loaded.processor.save_pretrained(out)
    normal_permissions(out)
    parameters = sum(p.numel() for p in loaded.model.parameters())
    info = {"vision": vision, "base": base, "parameters": parameters, "sizes": sizes}
    atomic_write_json(out / "lab_training.json", info)
    return info


def _train_section(stage: TrainStage, seed: int, progress: bool) -> dict[str, Any]:
    return {
        "learning_rate": stage.learning_rate,
        "max_steps": stage.max_steps,
        "per_device_train_batch_size": stage.batch_size,
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": [],
        "seed": seed,
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "disable_tqdm": not progress,
    }


def lab_recipe(
    *,
    model: Path,
    method: dict[str, Any],
    stage: TrainStage,
    retain: Path,
    image_root: Path,
    output_dir: Path,
    template: str,
    seed: int,
    forget: Path | None = None,
    progress: bool = True,
) -> Recipe:
    """The `unmirage unlearn` recipe of one lab training stage (validated, method included)."""
    data = DataSection(retain=str(retain), image_root=str(image_root), template=template, max_length=512)
    if forget is not None:
        data.forget = str(forget)
    recipe = Recipe(
        model=str(model),
        dtype="float32",
        data=data,
        method=method,
        train=_train_section(stage, seed, progress),
        output_dir=str(output_dir),
        plot=False,
    )
    if stage.trainable is not None:
        recipe.trainable = list(stage.trainable)
    recipe.method_config()
    return recipe


def write_recipe(path: Path, recipe: Recipe) -> Path:
    """`recipe` as the YAML file a user would write (only the keys it sets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        path, yaml.safe_dump(recipe.model_dump(mode="json", exclude_unset=True), sort_keys=False)
    )
    return path


# ----- one seed's stages ---------------------------------------------------------------------------------------


@dataclass
class SeedRun:
    """One seed of the lab under `out`: its settings (the world's seed set to `seed`), folders and runner;
    stages record what later ones need (`sft_files`, `base_info`, `results`)."""

    config: LabConfig
    out: Path
    seed: int
    progress: bool = True
    resume: bool = False
    sft_files: dict[int, Path] = field(default_factory=dict)
    base_info: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from unmirage.lab.world import World, world_files

        world = self.config.world.model_copy(update={"seed": self.seed})
        self.config = self.config.model_copy(update={"world": world})
        self.world = World(world)
        self.runner = Runner(self.out, self.progress)
        self.files = world_files(self.out / "world")
        self.attacks = {
            "what": self.out / "world" / "test_what_3shot.json",
            "share": self.out / "world" / "test_share_1shot.json",
        }

    @property
    def models(self) -> Path:
        return self.out / "models"

    @property
    def unlearn(self) -> Path:
        return self.out / "data" / "unlearn"

    def todo(self, *outputs: Path) -> bool:
        """Whether a stage with these outputs runs (always, unless resuming with all of them there)."""
        return not (self.resume and all(p.exists() for p in outputs))

    def recipe(self, name: str, stage: TrainStage, method: dict[str, Any], **data: Path) -> Path:
        """OUT/recipes/NAME.yaml: `method` trained from the base model into OUT/models/NAME."""
        recipe = lab_recipe(
            model=self.models / "base",
            method=method,
            stage=stage,
            output_dir=self.models / name,
            image_root=self.files.image_root,
            template=self.config.eval.template,
            seed=self.seed,
            progress=self.progress,
            **data,
        )
        return write_recipe(self.out / "recipes" / f"{name}.yaml", recipe)

    def unlearn_model(self, name: str, recipe: Path) -> None:
        """`unmirage unlearn RECIPE` unless the model is there (resume)."""
        if self.todo(self.models / name / "model.safetensors"):
            self.runner.cli("unlearn", recipe)


def world(run: SeedRun) -> None:
    """The world's files and the SFT training files (Posthoc, and Mixed with its general replay)."""
    from unmirage.lab.world import write_world

    if run.todo(run.files.world):
        write_world(run.world, run.out / "world")
    replays = sorted({run.config.sft_posthoc.replay, run.config.sft_mixed.replay})
    run.sft_files = write_sft_files(run.out / "world", replays)


def attack_files(run: SeedRun) -> None:
    """`attack build`: 3-shot "What" rewrites of the unsafe test questions, 1-shot "Share" of the safe ones."""
    if not run.todo(run.attacks["what"], run.attacks["share"]):
        return
    for trigger, k, subset, out in (("What", 3, "unsafes", "what"), ("Share", 1, "safe_safes", "share")):
        run.runner.cli(
            "attack", "build", data=run.files.test, trigger=trigger, k=k, subset=subset, out=run.attacks[out]
        )


def spurious(run: SeedRun) -> None:
    """`analyze spurious` on the SFT training questions."""
    if run.todo(run.out / "spurious" / "spurious.json"):
        run.runner.cli("analyze", "spurious", run.files.sft_train, out=run.out / "spurious")


def base_model(run: SeedRun) -> None:
    """The lab's base model (`build_base_model`), and its training record."""
    base = run.models / "base"
    if run.todo(base / "lab_training.json"):
        build_base_model(run.config, run.world, base, run.seed, run.progress)
    run.base_info = json.loads((base / "lab_training.json").read_text(encoding="utf-8"))


def safety_sft(run: SeedRun) -> None:
    """`unlearn` with method sft: Posthoc (safety pairs only) and Mixed (with general replay)."""
    for name, stage in (("sft-posthoc", run.config.sft_posthoc), ("sft-mixed", run.config.sft_mixed)):
        run.unlearn_model(name, run.recipe(name, stage, {"name": "sft"}, retain=run.sft_files[stage.replay]))


def forget_retain(run: SeedRun) -> None:
    """`data mine-harmful` (the base model's own answers) and `data build-unlearn` (forget, retain + mix)."""
    if not run.todo(run.unlearn / "manifest.json"):
        return
    cfg, files, harmful = run.config, run.files, run.out / "data" / "harmful.json"
    run.runner.cli(
        "data",
        "mine-harmful",
        vlguard=files.sft_train,
        generator=run.models / "base",
        image_root=files.image_root,
        out=harmful,
        template=cfg.eval.template,
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        device="cpu",
    )
    run.runner.cli(
        "data",
        "build-unlearn",
        vlguard=files.sft_train,
        harmful=harmful,
        mix=files.general,
        mix_to=cfg.eval.unlearn_mix_to,
        seed=run.seed,
        out=run.unlearn,
    )


def npo(run: SeedRun) -> None:
    """`unlearn` NPO from the base model."""
    cfg = run.config.npo
    method = {"name": "npo", "beta": cfg.beta, "retain_ce_weight": cfg.retain_ce_weight}
    data = {"retain": run.unlearn / "retain_mixed.json", "forget": run.unlearn / "forget.json"}
    run.unlearn_model("npo", run.recipe("npo", cfg, method, **data))


def rmu(run: SeedRun) -> None:
    """`unlearn` RMU from the base model (`steering_coeff: auto`, layers 0 to the steered one trained)."""
    cfg = run.config.rmu
    method = {
        "name": "rmu",
        "layer": cfg.layer,
        "steering_coeff": "auto",
        "steering_relative": cfg.steering_relative,
        "alpha": cfg.alpha,
        "retain_ce_weight": cfg.retain_ce_weight,
        "mask": cfg.mask,
        "trainable_layers": list(range(cfg.layer + 1)),
    }
    data = {"retain": run.unlearn / "retain_mixed.json", "forget": run.unlearn / "forget_rmu.json"}
    run.unlearn_model("rmu", run.recipe("rmu", cfg, method, **data))


def evaluate(run: SeedRun, name: str) -> None:
    """`eval` of one model on the four cases and the prefill attack, then the oracle's scoring."""
    from unmirage.lab.oracle import Oracle
    from unmirage.lab.score import file_oracle, load_objects

    cfg, files, run_dir = run.config.eval, run.files, run.out / name
    metrics_path = run_dir / "metrics.json"
    if run.todo(metrics_path) or "oracle" not in json.loads(metrics_path.read_text(encoding="utf-8")):
        run.runner.cli(
            "eval",
            model=run.models / name,
            vlguard_test=files.test,
            share=run.attacks["share"],
            what=run.attacks["what"],
            image_root=files.image_root,
            out=run_dir,
            label=name,
            template=cfg.template,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            bootstrap=cfg.bootstrap,
            seed=run.seed,
            prefill=cfg.prefill,
        )
        file_oracle(run_dir, Oracle.from_world_file(files.world), load_objects(files.objects), files.world)
    run.results[name] = headline(json.loads(metrics_path.read_text(encoding="utf-8")))


def report(run: SeedRun) -> None:
    """`report` over every model, with the spurious-word chart."""
    figure = run.out / "spurious" / "spurious.png"
    run.runner.cli("report", *[run.out / name for name in MODELS], out=run.out / "report", figure=figure)


def _evaluation(name: str) -> Callable[[SeedRun], None]:
    return lambda run: evaluate(run, name)


#: (stage name in OUT/timings.json, stage), in the order they run.
STAGES: tuple[tuple[str, Callable[[SeedRun], None]], ...] = (
    ("world", world),
    ("attack files", attack_files),
    ("analyze spurious", spurious),
    ("base model", base_model),
    ("safety SFT", safety_sft),
    ("forget/retain data", forget_retain),
    ("NPO", npo),
    ("RMU", rmu),
    *((f"eval {name}", _evaluation(name)) for name in MODELS),
    ("report", report),
)
