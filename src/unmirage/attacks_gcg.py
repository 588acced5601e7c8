"""GCG: greedy coordinate gradient adversarial suffixes (Zou et al. 2023, "Universal and Transferable
Adversarial Attacks on Aligned Language Models"), for causal LMs and LLaVA-class VLMs.

For one harmful question, GCG looks for a suffix of `n` tokens that, appended to the question, makes the model
open its answer with a target text ("Sure, here is"). The loss is the mean cross-entropy of the target tokens
after the prompt (teacher-forced). Each step:

1. **Token gradients.** The suffix is a one-hot matrix `X` (n x V); its embeddings are `X @ E` (E: the input
   embedding matrix), so `dL/dX` (n x V) says, to first order, how much swapping position i to token v
   would change the loss.
2. **Candidates.** `search_width` copies of the suffix, each with one random position set to one of the
   `topk` tokens with the most negative gradient there (special, added and, by default, non-ASCII tokens
   never enter a suffix).
3. **Re-tokenisation filter.** A candidate is kept only if the prompt text with its decoded suffix tokenises
   back to exactly the same ids, so the suffix that is scored is the one a later `generate` sees.
4. **Scoring.** The loss of every kept candidate, in batches (`batch_size` per forward). The prompt before the
   suffix (system text, image, question) is the same for every candidate: with `prefix_cache` its keys and
   values are computed once per question and reused by every forward.
5. The suffix becomes the candidate with the lowest loss. The run stops early once greedy decoding would
   produce the target (every target token is the argmax under teacher forcing), or after `steps`.

The returned suffix is the one with the lowest loss seen (one that reaches the target first). Prompts are built by the model's family adapter
exactly as `unmirage.generate` builds them (`template` v1 or chat), with the suffix appended to the question
after the question's own text; the target follows the prompt as an assistant prefix would.

VLMs: the image is encoded once into the prefix (its features merged into the embeddings the language model
sees); the suffix stays in the text. Models whose positions depend on the image layout (Qwen2.5-VL's M-RoPE)
are not supported.

`run_gcg` attacks a list of questions into a JSON-lines file, one line per finished question (`JsonlAppender`):
a killed run loses at most the question in progress, and a rerun continues with the others. Each question's
random numbers are seeded from (seed, id), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unmirage.errors import UnmirageError
from unmirage.settings import GCGConfig

if TYPE_CHECKING:
    from PIL import Image

    from unmirage.data.images import ImageLoader
    from unmirage.models import LoadedModel

SUFFIX_SENTINEL = "UNMIRAGE_GCG_SUFFIX"
"""Rendered once in place of the suffix to split a prompt into the text before and after it."""
UNSUPPORTED_FAMILIES = {"qwen2_5_vl": "its M-RoPE positions depend on the image grid"}


@dataclass(frozen=True)
class GCGTask:
    """One question to attack. `image` is what the attack's image loader takes (path, PIL image or None)."""

    id: str
    question: str
    image: Any = None


@dataclass
class GCGResult:
    """The outcome for one question (one JSON line of a run)."""

    id: str
    question: str
    suffix: str
    suffix_ids: list[int]
    loss: float
    initial_loss: float
    steps: int
    reached: bool
    losses: list[float]
    candidates: int
    seconds: float
    target: str
    settings: str = ""

    @property
    def attacked_question(self) -> str:
        """The question as the model is asked it: the question text followed by the suffix."""
        return self.question + self.suffix

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Problem:
    """One question made ready for optimisation: token ids of the fixed parts and their embeddings."""

    task: GCGTask
    before_text: str
    after_text: str
    before_ids: list[int]  # text-level ids (the tokenizer's), for the re-tokenisation check
    after_ids: list[int]
    suffix_ids: torch.Tensor  # (n,) the initial suffix
    target_ids: torch.Tensor  # (T,)
    before_embeds: torch.Tensor  # (1, P, d): what the language model sees (image features merged)
    after_embeds: torch.Tensor  # (1, A, d)
    target_embeds: torch.Tensor  # (1, T, d)
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    text_cache: dict[tuple[int, ...], bool] = field(default_factory=dict)


@contextlib.contextmanager
def frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """No parameter gradients while GCG runs (only the one-hot suffix needs one); restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class GCGAttack:
    """GCG against one loaded model (`models.LoadedModel`).

    `image_loader` turns a task's `image` into a PIL image (default `data.images.ImageLoader()`);
    with `placeholder_images` a VLM gets a grey image for tasks without one.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        config: GCGConfig | None = None,
        *,
        image_loader: ImageLoader | None = None,
        placeholder_images: bool = False,
    ) -> None:
        from unmirage.data.images import ImageLoader

        self.loaded = loaded
        self.config = config or GCGConfig()
        family = loaded.family.name
        if family in UNSUPPORTED_FAMILIES:
            raise UnmirageError(f"GCG does not support {family} models yet ({UNSUPPORTED_FAMILIES[family]})")
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.image_loader = image_loader or ImageLoader()
        self.placeholder_images = placeholder_images
        self.embedding = self.model.get_input_embeddings()
        self.device = self.embedding.weight.device
        self.allowed = self._allowed_tokens()
        text_config = self.model.config.get_text_config(decoder=True)
        self.max_positions = getattr(text_config, "max_position_embeddings", None)

    # ----- vocabulary ----------------------------------------------------------------------------------------
    def _allowed_tokens(self) -> torch.Tensor:
        """Boolean mask over embedding rows of the tokens a suffix may use: not special, not added (the image
        token among them), inside the tokenizer's vocabulary, and (unless `allow_non_ascii`) printable ASCII."""
        tok = self.tokenizer
        rows = self.embedding.num_embeddings
        allowed = torch.zeros(rows, dtype=torch.bool)
        vocab = min(rows, len(tok))
        allowed[:vocab] = True
        banned = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
        for i in banned:
            if 0 <= i < rows:
                allowed[i] = False
        if not self.config.allow_non_ascii:
            texts = tok.batch_decode([[i] for i in range(vocab)], clean_up_tokenization_spaces=False)
            for i, text in enumerate(texts):
                if not text.strip() or not (text.isascii() and text.isprintable()):
                    allowed[i] = False
        if not allowed.any():
            raise UnmirageError("no token of this vocabulary may enter a GCG suffix")
        return allowed.to(self.device)

    # ----- prompts -------------------------------------------------------------------------------------------
    def _image(self, task: GCGTask) -> Any:
        if not self.loaded.multimodal:
            return None
        image = self.image_loader(task.image, task.id)
        if image is None and self.placeholder_images:
            from unmirage.placeholder import placeholder_image, placeholder_size

            image = placeholder_image(placeholder_size(self.loaded.processor))
        return image

    def _ids(self, text: str, special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def prompt_parts(self, task: GCGTask, has_image: bool) -> tuple[str, str]:
        """(text before the suffix, text after it) of the generation prompt for `task`."""
        text = self.loaded.family.build_prompt(
            task.question + SUFFIX_SENTINEL,
            template=self.config.template,
            processor=self.loaded.processor,
            has_image=has_image,
        )
        if text.count(SUFFIX_SENTINEL) != 1:
            raise UnmirageError("the prompt template does not keep the question text", record=task.id)
        before, after = text.split(SUFFIX_SENTINEL)
        return before, after

    def target_separator(self) -> str:
        """What goes between the prompt and the target: as between a prompt and an assistant prefix."""
        return " " if self.config.template == "v1" else ""

    def prepare(self, task: GCGTask) -> Problem:
        """Tokenise, check and embed the fixed parts of one question; compute its prefix cache if enabled."""
        cfg = self.config
        image = self._image(task)
        before, after = self.prompt_parts(task, image is not None)
        before_ids, after_ids = self._ids(before), self._ids(after, special=False)
        full = self._ids(before + cfg.suffix_init + after)
        suffix = full[len(before_ids) : len(full) - len(after_ids)]
        if (
            full[: len(before_ids)] != before_ids
            or full[len(full) - len(after_ids) :] != after_ids
            or not suffix
        ):
            raise UnmirageError(
                f"the suffix init {cfg.suffix_init!r} does not tokenise apart from the question and the "
                "template (start it with a space)",
                record=task.id,
            )
        with_target = self._ids(before + cfg.suffix_init + after + self.target_separator() + cfg.target)
        target = with_target[len(full) :]
        if not target or with_target[: len(full)] != full:
            problem = "tokenises to nothing" if not target else "does not tokenise apart from the prompt"
            raise UnmirageError(f"the target text {cfg.target!r} {problem}", record=task.id)
        before_embeds = self._prefix_embeddings(before, image)
        length = before_embeds.shape[1] + len(suffix) + len(after_ids) + len(target)
        if self.max_positions is not None and length > self.max_positions:
            raise UnmirageError(
                f"the prompt with suffix and target is {length} tokens, longer than the model's context "
                f"({self.max_positions})",
                record=task.id,
            )
        device = self.device
        target_ids = torch.tensor(target, device=device)
        after_t = torch.tensor([after_ids], dtype=torch.long, device=device)
        with torch.no_grad():
            problem = Problem(
                task=task,
                before_text=before,
                after_text=after,
                before_ids=before_ids,
                after_ids=after_ids,
                suffix_ids=torch.tensor(suffix, device=device),
                target_ids=target_ids,
                before_embeds=before_embeds,
                after_embeds=self.embedding(after_t),
                target_embeds=self.embedding(target_ids[None]),
            )
            if cfg.prefix_cache:
                out = self.model(inputs_embeds=before_embeds, use_cache=True)
                problem.prefix_kv = [(layer.keys, layer.values) for layer in out.cache.layers]
        return problem

    def _prefix_embeddings(self, before: str, image: Image.Image | None) -> torch.Tensor:
        """The embeddings the language model sees for the text before the suffix (image features merged)."""
        with torch.no_grad():
            if image is None:
                ids = torch.tensor([self._ids(before)], device=self.device)
                return self.embedding(ids)
            inputs = self.loaded.processor(images=[image], text=[before], return_tensors="pt")
            inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
            lm = self.model.get_submodule(self.loaded.family.language_model)
            seen: dict[str, torch.Tensor] = {}

            def grab(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
                seen["embeds"] = kwargs.get("inputs_embeds")

            handle = lm.register_forward_pre_hook(grab, with_kwargs=True)
            try:
                self.model(**inputs, use_cache=False)
            finally:
                handle.remove()
            if seen.get("embeds") is None:
                raise UnmirageError(
                    f"cannot read the merged image and text embeddings of this "
                    f"{type(self.model).__name__} (family {self.loaded.family.name})"
                )
            return seen["embeds"].detach()

    # ----- losses --------------------------------------------------------------------------------------------
    def _forward(self, problem: Problem, suffix_embeds: torch.Tensor, use_cache: bool) -> torch.Tensor:
        """Logits predicting each target token for a batch of suffix embeddings (B, n, d) -> (B, T, V)."""
        batch = suffix_embeds.shape[0]
        parts = [
            suffix_embeds,
            problem.after_embeds.expand(batch, -1, -1),
            problem.target_embeds.expand(batch, -1, -1),
        ]
        options: dict[str, Any] = {}
        if use_cache and problem.prefix_kv is not None:
            from transformers import DynamicCache

            data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in problem.prefix_kv]
            options["cache"] = DynamicCache(ddp_cache_data=data, config=self.model.config)
        else:
            parts.insert(0, problem.before_embeds.expand(batch, -1, -1))
        n_target = problem.target_ids.shape[0]
        out = self.model(
            inputs_embeds=torch.cat(parts, dim=1), use_cache=False, logits_to_keep=n_target + 1, **options
        )
        return out.logits[:, :-1, :]

    def _losses(self, problem: Problem, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean target cross-entropy per row and whether greedy decoding would give the whole target."""
        target = problem.target_ids.expand(logits.shape[0], -1)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        return ce.mean(dim=1), (logits.argmax(dim=-1) == target).all(dim=1)

    def token_gradient(self, problem: Problem, suffix_ids: torch.Tensor) -> tuple[float, torch.Tensor]:
        """(loss, dL/dX) for the suffix's one-hot matrix X: (n, V) over the embedding rows."""
        weight = self.embedding.weight
        one_hot = torch.nn.functional.one_hot(suffix_ids, num_classes=weight.shape[0]).to(weight.dtype)
        one_hot.requires_grad_(True)
        with torch.enable_grad():
            logits = self._forward(problem, (one_hot @ weight)[None], self.config.prefix_cache)
            loss = self._losses(problem, logits)[0][0]
            (grad,) = torch.autograd.grad(loss, one_hot)
        return float(loss.detach()), grad

    @torch.no_grad()
    def score(
        self, problem: Problem, candidates: torch.Tensor, use_cache: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and target-reached flag of each candidate suffix (B, n), in batches of `batch_size`."""
        use_cache = self.config.prefix_cache if use_cache is None else use_cache
        size = self.config.batch_size or candidates.shape[0]
        losses, reached = [], []
        for start in range(0, candidates.shape[0], size):
            logits = self._forward(problem, self.embedding(candidates[start : start + size]), use_cache)
            loss, hit = self._losses(problem, logits)
            losses.append(loss)
            reached.append(hit)
        return torch.cat(losses), torch.cat(reached)

    # ----- candidates ----------------------------------------------------------------------------------------
    def sample_candidates(
        self, suffix_ids: torch.Tensor, grad: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """`search_width` copies of the suffix, each with one random position swapped to one of the `topk`
        allowed tokens of most negative gradient there (uniformly)."""
        cfg = self.config
        scores = (-grad).masked_fill(~self.allowed[None], -math.inf)
        k = min(cfg.topk, int(self.allowed.sum()))
        top = scores.topk(k, dim=1).indices.cpu()  # (n, k)
        n = suffix_ids.shape[0]
        positions = torch.randint(0, n, (cfg.search_width,), generator=generator)
        choices = torch.randint(0, k, (cfg.search_width,), generator=generator)
        candidates = suffix_ids.cpu().repeat(cfg.search_width, 1)
        candidates[torch.arange(cfg.search_width), positions] = top[positions, choices]
        return candidates.to(self.device)

    def suffix_text(self, problem: Problem, suffix: Sequence[int]) -> str:
        """The text of suffix ids as it follows the question: decoded after the question's last token and
        cut after that token's text (SentencePiece tokenizers drop the leading space of a text's first token
        when decoding it alone)."""
        anchor = problem.before_ids[-1:]
        decode = self.tokenizer.decode
        head = decode(anchor, clean_up_tokenization_spaces=False)
        text = decode([*anchor, *suffix], clean_up_tokenization_spaces=False)
        if anchor and text.startswith(head):
            return text[len(head) :]
        return decode(list(suffix), clean_up_tokenization_spaces=False)

    def retokenises(self, problem: Problem, suffix: Sequence[int]) -> bool:
        """Whether the prompt text with this suffix decoded tokenises back to exactly the same ids."""
        key = tuple(suffix)
        if key not in problem.text_cache:
            text = self.suffix_text(problem, key)
            ids = self._ids(problem.before_text + text + problem.after_text)
            problem.text_cache[key] = ids == problem.before_ids + list(key) + problem.after_ids
        return problem.text_cache[key]

    def filter_candidates(self, problem: Problem, candidates: torch.Tensor) -> torch.Tensor:
        """Distinct candidates that survive the re-tokenisation check (file order of first occurrence)."""
        rows = list(dict.fromkeys(tuple(r) for r in candidates.tolist()))
        kept = [r for r in rows if self.retokenises(problem, r)]
        return torch.tensor(kept, dtype=torch.long, device=self.device).reshape(len(kept), -1)

    # ----- one question --------------------------------------------------------------------------------------
    def run(self, task: GCGTask, progress: Callable[[int, float], None] | None = None) -> GCGResult:
        """Optimise a suffix for one question (see the module docstring); `progress(step, loss)` is called
        after every step."""
        cfg = self.config
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(_task_seed(cfg.seed, task.id))
        with frozen_parameters(self.model):
            problem = self.prepare(task)
            suffix = problem.suffix_ids
            initial, reached0 = self.score(problem, suffix[None])
            best_loss, best, reached = float(initial[0]), suffix, bool(reached0[0])
            loss = best_loss  # the current suffix's
            losses: list[float] = []
            evaluated, steps = 1, 0
            while steps < cfg.steps and not (reached and cfg.early_stop):
                steps += 1
                _, grad = self.token_gradient(problem, suffix)
                candidates = self.filter_candidates(problem, self.sample_candidates(suffix, grad, generator))
                if len(candidates) == 0:  # every swap changed the tokenisation: try new swaps next step
                    losses.append(round(loss, 5))
                    continue
                cand_losses, cand_reached = self.score(problem, candidates)
                evaluated += len(candidates)
                pick = int(cand_losses.argmin())
                suffix, loss, hit = candidates[pick], float(cand_losses[pick]), bool(cand_reached[pick])
                losses.append(round(loss, 5))
                # the best suffix: one that reaches the target, then the lowest loss
                if (hit, -loss) > (reached, -best_loss):
                    best_loss, best, reached = loss, suffix, hit
                if progress is not None:
                    progress(steps, loss)
        ids = best.tolist()
        return GCGResult(
            id=task.id,
            question=task.question,
            suffix=self.suffix_text(problem, ids),
            suffix_ids=ids,
            loss=round(best_loss, 5),
            initial_loss=round(float(initial[0]), 5),
            steps=steps,
            reached=reached,
            losses=losses,
            candidates=evaluated,
            seconds=round(time.perf_counter() - started, 3),
            target=cfg.target,
            settings=cfg.fingerprint(self.loaded.source),
        )


def _task_seed(seed: int, task_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{task_id}".encode()).digest()[:8], "little")


def run_gcg(
    attack: GCGAttack, tasks: Sequence[GCGTask], out: str | os.PathLike, *, progress: bool = True
) -> list[GCGResult]:
    """Attack every task into the JSON-lines file `out` (resumable); returns the results in task order.

    Finished questions already in `out` are kept (they must come from the same model and settings); each
    newly finished question is appended and flushed at once.
    """
    from unmirage.runs import JsonlAppender, read_jsonl_resumable

    out = Path(out)
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise UnmirageError(
            f"duplicate id {next(i for i in ids if ids.count(i) > 1)!r} among the GCG questions"
        )
    fingerprint = attack.config.fingerprint(attack.loaded.source)
    done: dict[str, GCGResult] = {}
    for row in read_jsonl_resumable(out):
        if row.get("settings") != fingerprint:
            raise UnmirageError(
                "holds GCG results of another model or other settings; use a new output or delete it",
                file=out,
                record=row.get("id"),
            )
        done[str(row["id"])] = GCGResult(**row)
    todo = [t for t in tasks if t.id not in done]
    bar = _bar(len(tasks), len(tasks) - len(todo), enabled=progress)
    with JsonlAppender(out) as writer:
        for task in todo:

            def show(step: int, loss: float, name: str = task.id) -> None:
                bar.set_postfix_str(f"{name} step {step} loss {loss:.3f}")

            bar.set_postfix_str(task.id)
            result = attack.run(task, progress=show)
            writer.write_many([result.to_json()])
            done[task.id] = result
            bar.update(1)
    bar.close()
    return [done[t.id] for t in tasks]


def _bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="GCG", unit="question", disable=not enabled)


def summarise_gcg(results: Sequence[GCGResult]) -> dict[str, Any]:
    """Counts and means over a run: questions, target reached, mean initial/final loss, steps, candidates."""
    n = len(results)
    if not n:
        return {"questions": 0}
    seconds = sum(r.seconds for r in results)
    return {
        "questions": n,
        "reached": sum(r.reached for r in results),
        "mean_initial_loss": round(sum(r.initial_loss for r in results) / n, 4),
        "mean_loss": round(sum(r.loss for r in results) / n, 4),
        "mean_steps": round(sum(r.steps for r in results) / n, 2),
        "candidates": sum(r.candidates for r in results),
        "seconds": round(seconds, 1),
    }


def select_ids(
    ids: Sequence[str], *, limit: int | None = None, subsample: int | None = None, seed: int = 0
) -> list[str]:
    """The ids to attack: the first `limit`, or a seeded `subsample` (the ids `unmirage eval --subsample N
    --seed S` picks for the unsafe cases of the same file), in file order."""
    unique = list(dict.fromkeys(ids))
    if limit is not None and subsample is not None:
        raise UnmirageError("give either limit or subsample, not both")
    for name, value in (("limit", limit), ("subsample", subsample)):
        if value is not None and value < 1:
            raise UnmirageError(f"{name} must be at least 1 (got {value})")
    if limit is not None:
        return unique[:limit]
    if subsample is not None:
        keep = set(random.Random(f"{seed}/unsafe_normal").sample(sorted(unique), min(subsample, len(unique))))
        return [i for i in unique if i in keep]
    return unique


def attacked_records(items: Sequence[Any], results: Sequence[GCGResult]) -> list[dict[str, Any]]:
    """VLGuard records (the schema of the other attack files) with each attacked instruction followed by
    its suffix, and a `gcg` entry per record: the original question, suffix, losses, steps, target reached.

    `items` are `attacks.AttackItem`s (the record and which instruction is attacked), in the order of
    `results`."""
    import copy

    out = []
    for item, result in zip(items, results, strict=True):
        record = copy.deepcopy(item.record)
        record["instr-resp"][item.index][item.key] = result.attacked_question
        record["gcg"] = {
            "question": result.question,
            "suffix": result.suffix,
            "target": result.target,
            "loss": result.loss,
            "initial_loss": result.initial_loss,
            "steps": result.steps,
            "reached": result.reached,
        }
        out.append(record)
    return out


def progress_path(out: str | os.PathLike) -> Path:
    """The resumable per-question log next to an attack file: `<stem>.gcg.jsonl`."""
    out = Path(out)
    return out.with_name(out.stem + ".gcg.jsonl")


def build_gcg_attack(
    model: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: GCGConfig,
    *,
    subset: str = "unsafes",
    image_root: str | os.PathLike | None = None,
    placeholder_images: bool = False,
    limit: int | None = None,
    subsample: int | None = None,
    dtype: str = "auto",
    adapter: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """`unmirage attack gcg`: a GCG suffix for every selected question of a VLGuard file, written as an
    attack file (`attacked_records`) with `<stem>.gcg.jsonl` (per-question log, resumable),
    `<stem>.report.json` and `<stem>.manifest.json` next to it. Returns the report's summary.

    VLMs need exactly one of `image_root` and `placeholder_images` (every image is checked before the model
    loads); a text-only causal LM reads neither.
    """
    from unmirage.attacks import select_items, write_attack_records
    from unmirage.data.images import ImageLoader
    from unmirage.data.jsonfile import read_json_list
    from unmirage.models import load_model, resolve_device
    from unmirage.models.load import source_is_multimodal
    from unmirage.runs import atomic_write_json, write_manifest

    data, out = Path(data), Path(out)
    records = read_json_list(data, "VLGuard records")
    items = select_items(records, subset, path=data)
    if not items:
        raise UnmirageError(f"no '{subset}' instructions found", file=data)
    keep = set(
        select_ids([it.record["id"] for it in items], limit=limit, subsample=subsample, seed=config.seed)
    )
    items = [it for it in items if it.record["id"] in keep]
    multimodal = source_is_multimodal(model)
    if multimodal and (image_root is None) == (not placeholder_images):
        raise UnmirageError("a VLM needs either image_root or placeholder_images")
    if image_root is not None and placeholder_images:
        raise UnmirageError("give either image_root or placeholder_images, not both")
    loader = ImageLoader(root=Path(image_root)) if image_root is not None and multimodal else ImageLoader()
    with_images = multimodal and image_root is not None
    if with_images:
        loader.verify([(it.record["id"], it.record["image"]) for it in items], progress=progress)
    loaded = load_model(model, dtype=dtype, device_map=resolve_device(), adapter=adapter)
    attack = GCGAttack(loaded, config, image_loader=loader, placeholder_images=placeholder_images)
    tasks = [
        GCGTask(it.record["id"], it.question, it.record["image"] if with_images else None) for it in items
    ]
    log = progress_path(out)
    results = run_gcg(attack, tasks, log, progress=progress)
    write_attack_records(attacked_records(items, results), out)
    summary = {"model": model, "subset": subset, **summarise_gcg(results)}
    report = out.with_name(out.stem + ".report.json")
    atomic_write_json(report, {"summary": summary, "questions": [r.to_json() for r in results]})
    write_manifest(
        out.parent,
        name=f"{out.stem}.manifest.json",
        command="attack gcg",
        config={
            "model": model,
            "adapter": str(adapter) if adapter else None,
            "dtype": dtype,
            "subset": subset,
            "limit": limit,
            "subsample": subsample,
            "gcg": config.model_dump(mode="json"),
        },
        inputs=[data],
        outputs=[out, log, report],
        seed=config.seed,
        images={
            "image_root": str(image_root) if image_root else None,
            "placeholder_images": placeholder_images,
        },
    )
    return summary
