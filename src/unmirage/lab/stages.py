"""MirageLab's stages, in order: each a function of one seed's `SeedRun`, which runs the toolkit's own
commands in this process with the arguments a user would type (`Runner`, logged to OUT/commands.sh), or the
lab's own steps (the world, the base model, the oracle's scoring). With `resume`, a stage whose outputs are
already there is skipped."""

from __future__ import annotations

import functools
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


def _execute(argv: list[str]) -> None:
    from unmirage.cli.main import app

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


class Runner:
    """Runs `unmirage` commands in this process (or, side by side, in forked ones), logs them to commands.sh
    in the order given and times every stage."""

    def __init__(self, out: Path, progress: bool = True, workers: int = 1) -> None:
        self.out = out
        self.progress = progress
        self.workers = workers
        self.timings: dict[str, float] = {}
        self.commands: list[str] = []

    def _record(self, args: Sequence[str | os.PathLike], options: dict[str, Any]) -> list[str]:
        """argv of `unmirage ARGS --OPTION VALUE ...` (an option's name is its keyword with dashes:
        `max_new_tokens=32` is `--max-new-tokens 32`), appended to commands.sh."""
        flags = [item for key, value in options.items() for item in ("--" + key.replace("_", "-"), value)]
        argv = [str(a) for a in (*args, *flags)]
        self.commands.append("unmirage " + " ".join(shlex.quote(a) for a in argv))
        atomic_write_text(self.out / "commands.sh", "\n".join(self.commands) + "\n")
        return argv

    def cli(self, *args: str | os.PathLike, **options: str | os.PathLike | int | float) -> None:
        """`unmirage ARGS --OPTION VALUE ...`, exactly as a user would type it; raises UnmirageError on
        failure."""
        _execute(self._record(args, options))

    def side_by_side(
        self, commands: Sequence[tuple[str, Sequence[Any], dict[str, Any]]], desc: str, logs: Path
    ) -> None:
        """`(name, args, options)` commands that do not depend on each other, `workers` at a time in forked
        processes (`unmirage.lab.parallel.run_jobs`, output in `logs/<name>.log`); each one's time goes to
        `timings` under its name."""
        from unmirage.lab.parallel import run_jobs

        jobs = [
            (name, functools.partial(_execute, self._record(args, options)))
            for name, args, options in commands
        ]
        self.timings.update(run_jobs(jobs, self.workers, progress=self.progress, desc=desc, logs=logs))

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


def build_base_model(
    config: LabConfig, world: World, out: Path, seed: int, progress: bool, ranks: int = 1
) -> dict[str, Any]:
    """Tiny LLaVA -> vision pretraining -> base training -> saved to `out` (model + processor), trained
    data-parallel over `ranks` forked processes (`unmirage.lab.parallel.run_ranks`; rank 0 saves)."""
    from unmirage.lab.parallel import run_ranks

    run_ranks(lambda: _train_and_save_base(config, world, out, seed, progress), ranks)
    return json.loads((out / "lab_training.json").read_text(encoding="utf-8"))


def _train_and_save_base(config: LabConfig, world: World, out: Path, seed: int, progress: bool) -> None:
    from unmirage.lab.parallel import rank_and_size
    from unmirage.lab.pretrain import pretrain_vision, train_base
    from unmirage.models import load_model

    sizes = config.model.model_dump()
    sizes.update(image_size=config.world.image_size, seed=seed)
    loaded = load_model("tiny-llava", dtype="float32", tiny_sizes=sizes)
    vision = pretrain_vision(loaded, world, config.vision, seed=seed, progress=progress)
    base = train_base(loaded, world, config.base, seed=seed, template=config.eval.template, progress=progress)
    rank, size = rank_and_size()
    if rank != 0:
        return
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out)
    loaded.processor.save_pretrained(out)
    normal_permissions(out)
    parameters = sum(p.numel() for p in loaded.model.parameters())
    info = {"vision": vision, "base": base, "parameters": parameters, "sizes": sizes, "ranks": size}
    atomic_write_json(out / "lab_training.json", info)


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
    workers: int = 1
    sft_files: dict[int, Path] = field(default_factory=dict)
    base_info: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from unmirage.lab.world import World, world_files

        world = self.config.world.model_copy(update={"seed": self.seed})
        self.config = self.config.model_copy(update={"world": world})
        self.world = World(world)
        self.runner = Runner(self.out, self.progress, self.workers)
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
            progress=self.progress and self.workers == 1,  # side by side, bars go to each job's log
            **data,
        )
        return write_recipe(self.out / "recipes" / f"{name}.yaml", recipe)

    def train(self, recipes: dict[str, Path], desc: str) -> None:
        """`unmirage unlearn RECIPE` for each model not there yet (resume), side by side."""
        commands = [
            (name, ["unlearn", recipe], {})
            for name, recipe in recipes.items()
            if self.todo(self.models / name / "model.safetensors")
        ]
        self.runner.side_by_side(commands, desc, self.out / "logs")


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
    """The lab's base model (`build_base_model`, data-parallel over the run's workers, at most 2: a batch of
    64 split further gains little), and its training record."""
    base = run.models / "base"
    if run.todo(base / "lab_training.json"):
        build_base_model(run.config, run.world, base, run.seed, run.progress, ranks=min(run.workers, 2))
    run.base_info = json.loads((base / "lab_training.json").read_text(encoding="utf-8"))


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


def trainings(run: SeedRun) -> None:
    """`unlearn` of the four models trained from the base model, side by side: Mixed and Posthoc safety SFT,
    NPO, and RMU (`steering_coeff: auto`, layers 0 to the steered one trained)."""
    cfg = run.config
    unlearn = {"retain": run.unlearn / "retain_mixed.json"}
    rmu = {
        "name": "rmu",
        "layer": cfg.rmu.layer,
        "steering_coeff": "auto",
        "steering_relative": cfg.rmu.steering_relative,
        "alpha": cfg.rmu.alpha,
        "retain_ce_weight": cfg.rmu.retain_ce_weight,
        "mask": cfg.rmu.mask,
        "trainable_layers": list(range(cfg.rmu.layer + 1)),
    }
    npo = {"name": "npo", "beta": cfg.npo.beta, "retain_ce_weight": cfg.npo.retain_ce_weight}
    recipes = {  # longest first, so the last one to start is a short one
        "sft-mixed": run.recipe(
            "sft-mixed", cfg.sft_mixed, {"name": "sft"}, retain=run.sft_files[cfg.sft_mixed.replay]
        ),
        "sft-posthoc": run.recipe(
            "sft-posthoc", cfg.sft_posthoc, {"name": "sft"}, retain=run.sft_files[cfg.sft_posthoc.replay]
        ),
        "rmu": run.recipe("rmu", cfg.rmu, rmu, forget=run.unlearn / "forget_rmu.json", **unlearn),
        "npo": run.recipe("npo", cfg.npo, npo, forget=run.unlearn / "forget.json", **unlearn),
    }
    run.train(recipes, "training")


def evaluations(run: SeedRun) -> None:
    """`eval` of every model on the four cases and the prefill attack, side by side, then the oracle's
    scoring of each."""
    from unmirage.lab.oracle import Oracle
    from unmirage.lab.score import file_oracle, load_objects

    cfg, files = run.config.eval, run.files
    options = {
        "vlguard_test": files.test,
        "share": run.attacks["share"],
        "what": run.attacks["what"],
        "image_root": files.image_root,
        "template": cfg.template,
        "max_new_tokens": cfg.max_new_tokens,
        "batch_size": cfg.batch_size,
        "bootstrap": cfg.bootstrap,
        "seed": run.seed,
        "prefill": cfg.prefill,
    }
    commands = [
        (
            f"eval {name}",
            ["eval"],
            {"model": run.models / name, "out": run.out / name, "label": name, **options},
        )
        for name in MODELS
        if run.todo(run.out / name / "metrics.json")
    ]
    run.runner.side_by_side(commands, "evaluation", run.out / "logs")
    oracle, objects = Oracle.from_world_file(files.world), load_objects(files.objects)
    for name in MODELS:
        metrics_path = run.out / name / "metrics.json"
        if "oracle" not in json.loads(metrics_path.read_text(encoding="utf-8")):
            file_oracle(run.out / name, oracle, objects, files.world)
        run.results[name] = headline(json.loads(metrics_path.read_text(encoding="utf-8")))


def report(run: SeedRun) -> None:
    """`report` over every model, with the spurious-word chart."""
    figure = run.out / "spurious" / "spurious.png"
    run.runner.cli("report", *[run.out / name for name in MODELS], out=run.out / "report", figure=figure)


#: (stage name in OUT/timings.json, stage), in the order they run.
STAGES: tuple[tuple[str, Callable[[SeedRun], None]], ...] = (
    ("world", world),
    ("attack files", attack_files),
    ("analyze spurious", spurious),
    ("base model", base_model),
    ("forget/retain data", forget_retain),
    ("trainings from the base", trainings),
    ("evaluations", evaluations),
    ("report", report),
)
