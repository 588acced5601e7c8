"""Linear probes on a model's layers: does a layer's representation of a question say "forget" or "retain",
and does the answer depend on how the question is worded?

At every probed decoder layer a logistic regression is trained to tell the forget set's questions (label 1)
from the retain set's (label 0), then evaluated per *form* on a VLGuard-schema file: the unsafe questions as
written, their rule rewrites that start with "What", the safe questions as written and their rule rewrites
that start with "Share" (`unmirage.text.rewrite`). A second, *form-blind* probe is trained on the same sets
augmented with their own What and Share rewrites (`unmirage.data.build.with_rewrites`), so that the first
word no longer separates the training classes.

Representation: the output of decoder layer `l` (0-based, as RMU's `layer`: captured with a forward hook, so
it is the residual stream *before* the final norm even for the last layer, unlike the last entry of
transformers' `hidden_states`), on the prompt alone (chat or v1 template, no answer), pooled as:

- `last`: the last prompt token (the end of the generation prompt, where the answer's first token is
  decided; the default);
- `mean`: the mean over every attended prompt token (system turn and image tokens included).

The probe: features standardised with the training set's mean and standard deviation, then a logistic
regression with an L2 penalty, fitted by L-BFGS in float64 with both classes weighted equally (the mean of
the per-class mean log-losses), so a probability of 0.5 is the decision threshold whatever the class sizes.
Everything is deterministic: no random initialisation (weights start at 0), seeded subsampling only.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unmirage.data.conversations import Example
from unmirage.errors import UnmirageError
from unmirage.stats import wilson_interval

if TYPE_CHECKING:
    from unmirage.data.requests import RequestLabels
    from unmirage.data.vlguard import Sample
    from unmirage.models import LoadedModel

POOLS = ("last", "mean")
PROBES = ("plain", "form_blind")


@dataclass(frozen=True)
class FormSet:
    """The questions of one evaluation form and the label they should get (1 = forget)."""

    name: str
    label: int
    examples: list[Example]
    skipped: int = 0


def subsample(items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """`limit` items drawn by `random.Random(seed)` (kept in file order), or all of them."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def rewritten(examples: Sequence[Example], word: str) -> tuple[list[Example], int]:
    """Each example's question as its first valid rule rewrite starting with `word` (id `ID#word`); returns
    the rewrites and how many questions no rule could rewrite (left out)."""
    from dataclasses import replace

    from unmirage.text.rewrite import rewrite_first_word

    out, skipped = [], 0
    for example in examples:
        found = rewrite_first_word(example.question, word)
        if found is None:
            skipped += 1
            continue
        out.append(replace(example, id=f"{example.id}#{word.lower()}", question=found[0]))
    return out, skipped


def evaluation_forms(
    path: str | Path,
    *,
    harmful_word: str = "What",
    safe_word: str = "Share",
    limit: int | None = None,
    seed: int = 0,
    what: str | Path | None = None,
    share: str | Path | None = None,
    requests: RequestLabels | None = None,
) -> list[FormSet]:
    """The forms of a VLGuard-schema file: `unsafe`, `unsafe_<harmful_word>`, `safe`, `safe_<safe_word>` (rule
    rewrites), plus `unsafe_attack` / `safe_attack` when a What attack file (`what`, K-shot) or a Share
    attack file (`share`) is given: its rewrites of the same questions. Up to `limit` questions are drawn per
    subset, the same ones in every form of it.

    With `requests` (request labels), the unsafe forms hold only requests labelled harmful: the questions
    labelled harmful as asked (drawn from those, up to `limit`), their rule rewrites, and the attack file's
    rewrites labelled harmful (of any labelled question)."""
    from unmirage.data.vlguard import load_vlguard, view

    data = load_vlguard(path, kind="plain")
    forms = []
    for subset, name, label, word, attack in (
        ("unsafes", "unsafe", 1, harmful_word, what),
        ("safe_safes", "safe", 0, safe_word, share),
    ):
        pool = view(data, subset)
        harmful = requests is not None and label == 1
        if harmful:
            pool = [s for s in pool if requests.harmful.get((s.id, None))]
        samples = subsample(pool, limit, seed)
        originals = [_example(s) for s in samples]
        rewrites, skipped = rewritten(originals, word)
        forms.append(FormSet(name, label, originals))
        forms.append(FormSet(f"{name}_{word.lower()}", label, rewrites, skipped))
        if attack is not None:
            ids = {s.id for s in samples}
            shots = view(load_vlguard(attack), subset)
            if harmful:
                shots = [s for s in shots if requests.harmful.get((s.id, s.shot))]
            else:
                shots = [s for s in shots if s.id in ids]
            forms.append(FormSet(f"{name}_attack", label, [_example(s, f"#attack{s.shot}") for s in shots]))
    return forms


def _example(sample: Sample, suffix: str = "") -> Example:
    """A question of a VLGuard view as a probe example (no answer)."""
    return Example(id=f"{sample.id}{suffix}", question=sample.question, answer="", image=sample.image)


def form_blind(examples: Sequence[Example], words: Sequence[str], seed: int) -> list[Example]:
    """The examples plus, per word, each question's first valid rule rewrite starting with it (the forget/retain
    builder's form balancing, `data.build.with_rewrites`)."""
    from unmirage.data.build import with_rewrites
    from unmirage.data.conversations import to_examples

    conversations, _ = with_rewrites([(e, e.answer) for e in examples], words, "first", seed)
    return to_examples(conversations, multi_turn="first")


# ----- representations -------------------------------------------------------------------------------------
def layer_features(
    loaded: LoadedModel,
    examples: Sequence[Example],
    layers: Sequence[int],
    collate: Callable[[Sequence[Example]], dict[str, torch.Tensor]],
    *,
    pool: str = "last",
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """`[len(examples), len(layers), hidden]` float32: decoder layer `l`'s output on each example's prompt,
    pooled (`last` token or `mean` over attended tokens). `collate` makes right-padded prompt batches
    (`Collator.encode_prompts`); `progress(n)` is called after each batch."""
    if pool not in POOLS:
        raise UnmirageError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    family, model = loaded.family, loaded.model
    blocks = [family.decoder_layer(model, layer) for layer in layers]
    captured: dict[int, torch.Tensor] = {}

    def hook(position: int) -> Callable[..., None]:
        def store(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            captured[position] = output[0] if isinstance(output, tuple | list) else output

        return store

    # longest first: batches of similar lengths waste little on padding; rows go back to input order
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].question), i))
    out = torch.empty(len(examples), len(layers), family.hidden_size(model))
    handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(blocks)]
    try:
        model.eval()
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = collate([examples[i] for i in rows])
            batch = {k: v.to(loaded.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            captured.clear()
            with torch.inference_mode():
                model(**batch, use_cache=False)
            mask = batch["attention_mask"].bool()
            for position in range(len(layers)):
                hidden = captured[position].float()
                if pool == "last":
                    last = mask.sum(dim=1) - 1
                    pooled = hidden[torch.arange(hidden.shape[0]), last]
                else:
                    weights = mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
                out[rows, position] = pooled.cpu()
            if progress is not None:
                progress(len(rows))
    finally:
        for handle in handles:
            handle.remove()
    return out


# ----- the probe -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearProbe:
    """A fitted logistic regression on standardised features: P(forget | x) = sigmoid(w . (x - mean)/scale + b)."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: float

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        """P(label 1) of each row of `x` (float64)."""
        z = (x.double() - self.mean) / self.scale
        return torch.sigmoid(z @ self.weight + self.bias)


def fit_probe(x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-2, max_iter: int = 200) -> LinearProbe:
    """Fit P(y = 1 | x) on `x` `[n, d]`, `y` in {0, 1}: minimise the class-balanced mean log-loss
    `(mean_{y=1} loss + mean_{y=0} loss) / 2 + l2/2 |w|^2` on standardised features (L-BFGS, float64,
    weights and bias start at 0: deterministic)."""
    y = y.double()
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise UnmirageError(f"probe: {tuple(x.shape)} features for {y.shape[0]} labels")
    if not (y == 1).any() or not (y == 0).any():
        raise UnmirageError("probe: the training set needs examples of both classes")
    if l2 < 0:
        raise UnmirageError(f"l2 must be >= 0, got {l2}")
    x = x.double()
    mean = x.mean(dim=0)
    scale = x.std(dim=0, unbiased=False).clamp_min(1e-8)
    z = (x - mean) / scale
    sample_weight = torch.where(y == 1, 0.5 / (y == 1).sum(), 0.5 / (y == 0).sum())
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = z @ weight + bias
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * sample_weight
        ).sum()
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(mean=mean, scale=scale, weight=weight.detach(), bias=float(bias.detach()))


def form_scores(prob: torch.Tensor, label: int, confidence: float = 0.95) -> dict[str, Any]:
    """Accuracy (share of rows on the right side of 0.5: P > 0.5 for label 1, P <= 0.5 for label 0), its Wilson
    interval, the mean P(forget) and n."""
    n = int(prob.numel())
    if n == 0:
        return {"n": 0, "accuracy": None, "accuracy_ci": None, "mean_p_forget": None}
    predicted = prob > 0.5
    correct = int((predicted if label == 1 else ~predicted).sum())
    accuracy = correct / n
    low, high = wilson_interval(accuracy, n, confidence)
    return {
        "n": n,
        "correct": correct,
        "accuracy": accuracy,
        "accuracy_ci": [low, high],
        "mean_p_forget": float(prob.mean()),
    }


# ----- the whole analysis -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeInputs:
    """Training and evaluation examples of one probe analysis."""

    forget: list[Example]
    retain: list[Example]
    forms: list[FormSet]
    rewrite_words: tuple[str, ...]
    seed: int


def probe_layers(
    inputs: ProbeInputs,
    features: Callable[[Sequence[Example], str], torch.Tensor],
    layers: Sequence[int],
    *,
    l2: float = 1e-2,
) -> dict[str, Any]:
    """Train the plain and form-blind probes at every layer and score every form.

    `features(examples, what)` returns `[n, len(layers), d]` representations (`what` names the set for
    progress messages). Returns `{"probes": {probe: {layer: {"train_accuracy", "forms": {form: scores}}}},
    "n": {...}}`."""
    blind_forget = form_blind(inputs.forget, inputs.rewrite_words, inputs.seed)
    blind_retain = form_blind(inputs.retain, inputs.rewrite_words, inputs.seed)
    train_sets = {
        "plain": (inputs.forget, inputs.retain),
        "form_blind": (blind_forget, blind_retain),
    }
    form_x = {
        form.name: features(form.examples, form.name) if form.examples else None for form in inputs.forms
    }
    result: dict[str, Any] = {"probes": {}, "n": {}}
    for probe_name, (forget, retain) in train_sets.items():
        x = torch.cat([features(forget, f"{probe_name} forget"), features(retain, f"{probe_name} retain")])
        y = torch.cat([torch.ones(len(forget)), torch.zeros(len(retain))])
        result["n"][probe_name] = {"forget": len(forget), "retain": len(retain)}
        per_layer: dict[str, Any] = {}
        for position, layer in enumerate(layers):
            probe = fit_probe(x[:, position], y, l2=l2)
            train_prob = probe.prob(x[:, position])
            train_accuracy = float(((train_prob > 0.5).double() == y).double().mean())
            forms = {}
            for form in inputs.forms:
                fx = form_x[form.name]
                prob = probe.prob(fx[:, position]) if fx is not None else torch.empty(0)
                forms[form.name] = form_scores(prob, form.label) | {"skipped": form.skipped}
            per_layer[str(layer)] = {"train_accuracy": train_accuracy, "forms": forms}
        result["probes"][probe_name] = per_layer
    result["n"]["forms"] = {form.name: len(form.examples) for form in inputs.forms}
    return result


def parse_layers(spec: Sequence[str] | None, n_layers: int) -> list[int]:
    """Layer indices from `--layers` items (`7`, `5-9`, `0,7,29`; a negative index counts from the end;
    default every layer), sorted and unique; out of range is a one-line error."""
    if not spec:
        return list(range(n_layers))
    chosen: set[int] = set()
    for item in (part.strip() for entry in spec for part in entry.split(",")):
        span = re.fullmatch(r"(\d+)-(\d+)", item)
        try:
            values = range(int(span[1]), int(span[2]) + 1) if span else [int(item)]
        except ValueError:
            raise UnmirageError(f"layers: cannot read {item!r} (give e.g. 7, 5-9 or 0,7,29)") from None
        for value in values:
            index = value + n_layers if value < 0 else value
            if not 0 <= index < n_layers:
                raise UnmirageError(
                    f"layers: layer {value} is out of range: the language model has {n_layers} layers "
                    f"(0..{n_layers - 1})"
                )
            chosen.add(index)
    return sorted(chosen)


class FeatureCache:
    """Representations computed once per distinct (question, image): the form-blind training sets repeat the
    plain ones. `compute(examples, what)` returns `[n, layers, d]` for new examples only."""

    def __init__(self, compute: Callable[[Sequence[Example], str], torch.Tensor]) -> None:
        self.compute = compute
        self.rows: dict[tuple[str, str], torch.Tensor] = {}

    def __call__(self, examples: Sequence[Example], what: str) -> torch.Tensor:
        keys = [(e.question, str(e.image)) for e in examples]
        todo = {key: e for key, e in zip(keys, examples) if key not in self.rows}
        if todo:
            self.rows.update(zip(todo, self.compute(list(todo.values()), what)))
        return torch.stack([self.rows[key] for key in keys])


def plot_probe(result: dict[str, Any], path: str | Path) -> None:
    """Probe accuracy by layer, one line per form (with its Wilson band), one panel per probe."""
    from unmirage.analysis.plotting import pyplot, save_png

    plt = pyplot()
    probes = [p for p in PROBES if p in result["probes"]]
    fig, axes = plt.subplots(1, len(probes), figsize=(6.5 * len(probes), 4.2), sharey=True, squeeze=False)
    for ax, probe in zip(axes[0], probes):
        per_layer = result["probes"][probe]
        layers = [int(layer) for layer in per_layer]
        forms = list(next(iter(per_layer.values()))["forms"])
        for form in forms:
            rows = [per_layer[str(layer)]["forms"][form] for layer in layers]
            if not rows[0]["n"]:
                continue
            accuracy = [100 * r["accuracy"] for r in rows]
            (line,) = ax.plot(layers, accuracy, marker="o", markersize=3, label=f"{form} (n={rows[0]['n']})")
            ax.fill_between(
                layers,
                [100 * r["accuracy_ci"][0] for r in rows],
                [100 * r["accuracy_ci"][1] for r in rows],
                color=line.get_color(),
                alpha=0.15,
            )
        ax.axhline(50, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"{probe.replace('_', '-')} probe")
        ax.set_xlabel("decoder layer (0-based)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0][0].set_ylabel("probe accuracy, % (95% Wilson band)")
    settings = result.get("settings", {})
    fig.suptitle(
        f"linear probe, forget vs retain: {settings.get('model', '')} ({settings.get('pool', '')} token)",
        fontsize=10,
    )
    fig.tight_layout()
    save_png(fig, path)
