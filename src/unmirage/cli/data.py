"""`unmirage data ...`: check data files, build forget/retain sets, fetch VLGuard."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import typer

from unmirage.cli.settings import out_option, settings_command
from unmirage.errors import UnmirageError
from unmirage.settings import MineSettings

data_app = typer.Typer(
    help="Data: check VLGuard and LLaVA files, build forget/retain sets, fetch VLGuard.",
    no_args_is_help=True,
)
fetch_app = typer.Typer(help="Download official data files (needs internet).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    data_app.add_typer(fetch_app, name="fetch")
    app.add_typer(data_app, name="data")


@data_app.command("check")
def check(
    file: Path = typer.Argument(
        ..., help="A VLGuard-schema file (train/test/attack) or a LLaVA conversation file."
    ),
    kind: str = typer.Option(
        "auto", help="VLGuard files: auto (K-shot when ids repeat in groups), plain (unique ids) or kshot."
    ),
    shots: int | None = typer.Option(
        None, help="VLGuard K-shot files: the group size K (default: detected)."
    ),
    allow_duplicate_ids: bool = typer.Option(
        False, help="VLGuard plain files: accept repeated ids (train.json repeats one)."
    ),
    image_root: Path | None = typer.Option(
        None, help="Also check that every listed image exists under this folder and is readable."
    ),
) -> None:
    """Validate a data file and print its counts (and check its images with --image-root)."""
    from unmirage.data.images import ImageLoader
    from unmirage.data.jsonfile import read_json

    raw = read_json(file)
    is_llava = isinstance(raw, list) and raw and isinstance(raw[0], dict) and "conversations" in raw[0]
    if is_llava:
        from unmirage.data.conversations import parse_conversations

        conversations = parse_conversations(raw, file)
        items = [(c.id, c.image) for c in conversations if c.image is not None]
        exchanges = sum(len(c.turns) // 2 for c in conversations)
        typer.echo(
            f"{file}: LLaVA conversations, {len(conversations)} records ({len(items)} with an image), "
            f"{exchanges} exchanges"
        )
    else:
        from unmirage.data.vlguard import FileKind, load_vlguard

        if kind not in ("auto", "plain", "kshot"):
            raise UnmirageError(f"--kind must be auto, plain or kshot, got '{kind}'")
        data = load_vlguard(
            file, kind=cast(FileKind, kind), shots=shots, allow_duplicate_ids=allow_duplicate_ids
        )
        counts = data.counts()
        shape = f"K-shot (K={data.shots}, {len(data.groups)} groups)" if data.kind == "kshot" else "plain"
        typer.echo(f"{file}: VLGuard {shape}, {counts['records']} records")
        typer.echo(
            f"  safe_safes {counts['safe_safes']}, safe_unsafes {counts['safe_unsafes']}, unsafes {counts['unsafes']}"
        )
        if data.duplicate_ids():
            typer.echo(f"  duplicate ids: {', '.join(data.duplicate_ids())}")
        items = [(r.id, r.image) for r in data.records]
    if image_root is not None:
        checked = ImageLoader(root=image_root).verify(items, progress=True)
        typer.echo(f"  images: {checked} distinct files under {image_root} checked")


@data_app.command("build-unlearn")
def build_unlearn(
    vlguard: Path = typer.Option(..., help="VLGuard training file (train.json)."),
    harmful: list[Path] | None = typer.Option(
        None,
        help="Mined harmful answers (from `data mine-harmful`, or the reference's image->answer JSON); "
        "repeatable (e.g. one file per --forget-subset). Without it the forget answers are the data set's "
        "own responses (refusals).",
    ),
    mix: Path | None = typer.Option(
        None, help="General instruction data (LLaVA conversation format) to mix into the retain set."
    ),
    mix_to: int | None = typer.Option(None, help="Size of the mixed retain set (default 2000; needs --mix)."),
    seed: int = typer.Option(42, help="Seed of the mixing draw and shuffle."),
    rewrite_word: list[str] | None = typer.Option(
        None,
        help="Form balancing (repeatable, e.g. What, Share): also add every forget and retain question "
        "rewritten to start with this word, with the same answer (not in the reference).",
    ),
    rewrite_pick: str = typer.Option(
        "first", help="Which valid rule rewrite: first (most natural) or random (one per question, seeded)."
    ),
    rewrite_side: str = typer.Option(
        "both", help="Which sets get the rewrites: both, forget or retain (e.g. a retain set of mixed forms)."
    ),
    forget_subset: list[str] | None = typer.Option(
        None,
        help="Where the forget questions come from: unsafes (unsafe images, the reference; the default) or "
        "safe_unsafes (the unsafe instructions on safe images: harmful as text; mine them with the same "
        "--subset); repeat it for both.",
    ),
    out: Path = typer.Option(..., help="Output folder for forget.json, retain.json, ... and manifest.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it holds an earlier build."),
) -> None:
    """Build forget.json, retain.json, forget_rmu.json, manifest.json (and retain_mixed.json with --mix)."""
    from unmirage.data.build import build_unlearn as build

    result = build(
        vlguard,
        out,
        harmful=harmful or None,
        mix=mix,
        mix_to=mix_to,
        seed=seed,
        rewrite_words=rewrite_word or (),
        rewrite_pick=rewrite_pick,
        rewrite_side=rewrite_side,
        forget_subset=forget_subset or "unsafes",
        overwrite=overwrite,
    )
    for name, path in result.files.items():
        typer.echo(f"{path}: {result.counts[name.removesuffix('.json')]} records")
    typer.echo(f"{result.manifest}: manifest")
    if result.answers_source == "dataset":
        typer.echo(
            "note: no --harmful given: the forget answers are VLGuard's own responses (refusals), "
            "as recorded in the manifest; to forget harmful answers, mine them first with `unmirage data "
            f"mine-harmful --vlguard {vlguard} --generator MODEL --out harmful.json` and pass --harmful harmful.json",
            err=True,
        )


@data_app.command("build-sft")
def build_sft(
    vlguard: Path = typer.Option(..., help="VLGuard training file (train.json)."),
    out: Path = typer.Option(
        ..., help="JSON file to write (LLaVA conversations); a manifest goes beside it."
    ),
) -> None:
    """Build the safety fine-tuning set: every instruction/response pair of the file (2977 on train.json)."""
    from unmirage.data.sft import build_sft as build

    path, counts = build(vlguard, out)
    typer.echo(f"{path}: {sum(counts.values())} pairs ({', '.join(f'{k} {v}' for k, v in counts.items())})")


def mine_harmful(settings: MineSettings, *, out: Path) -> None:
    """Answer every unsafe training query with each generator and keep the judge's most harmful pick."""
    from unmirage.mining import run_mine_harmful

    typer.echo(f"wrote {run_mine_harmful(settings, out)}")


MINE_OUT = out_option("Answers file to write (work files go to OUT.work/, a killed run resumes from them).")
data_app.command("mine-harmful")(settings_command(MineSettings, mine_harmful, extra=[MINE_OUT]))


@fetch_app.command("vlguard")
def fetch_vlguard(
    out: Path = typer.Option(..., help="Output folder (train.json, test.json, attack files, train/, test/)."),
    images: bool = typer.Option(True, help="Also download and unpack the image zips (--no-images to skip)."),
    revision: str | None = typer.Option(None, help="Revision (branch, tag or commit) of the Hub dataset."),
    attack_base_url: str | None = typer.Option(
        None, help="Base URL of the two attack files (default: the Safety Mirage repository on GitHub)."
    ),
) -> None:
    """Download the VLGuard files and the two attack files, verify their sha256 sums, unpack the images."""
    from unmirage.data.fetch import ATTACK_BASE_URL, HF_REPO, fetch_vlguard, hub_downloader, url_downloader

    sums = fetch_vlguard(
        out,
        images=images,
        hub=hub_downloader(HF_REPO, revision),
        attack=url_downloader(attack_base_url or ATTACK_BASE_URL),
        progress=lambda message: typer.echo(message, err=True),
    )
    for name, digest in sums.items():
        typer.echo(f"{digest}  {out / name}")
