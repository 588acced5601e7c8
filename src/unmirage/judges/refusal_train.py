"""Train the `refusal` judge's classifier (deterministic under a seed) and write `refusal_model.json`.

    python -m unmirage.judges.refusal_train --data data/refusal --vlguard ../shared/data/vlguard/train.json \
        --out src/unmirage/judges/refusal_model.json

Training answers (docs/judges.md):
- `DATA/train.jsonl`: hand-written answers labelled compliance / refusal / partial_refusal;
- compositions of the hand-written pieces in `DATA/parts.json` (seeded): refusals made of an opener, a reason
  and a redirection; partial refusals that refuse, pivot ("however, if you mean ...") and answer with one of
  the compliant answers of train.jsonl; compliant answers with friendly openers, disclaimers and closers;
- VLGuard's training responses, when `--vlguard` is given: the refusals to unsafe images' instructions and to
  safe images' unsafe instructions (refusal), the answers to safe instructions (compliance). Records whose
  id falls in the held-out fifth (`vlguard_part`) are left out, for measuring.

The model is a multinomial logistic regression over `refusal.features` (features seen in at least
`MIN_COUNT` training answers), L2-penalised, fitted by L-BFGS from zeros: no randomness beyond the seeded
compositions. Weights below `PRUNE` in every class are dropped to keep the file small.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unmirage.judges.refusal import LABELS, RefusalModel, features
from unmirage.judges.validate import REFUSAL_LABELS, read_labels

MIN_COUNT = 2
L2 = 1.0
PRUNE = 0.01
SEED = 0
# Weight of one answer of each source (hand-written answers count most; the sources end up comparable).
SOURCE_WEIGHT = {"handwritten": 3.0, "composed": 1.0, "vlguard": 0.5}
COMPOSED = {"compliance": 3, "refusal": 500, "partial_refusal": 400}  # compliance: variants per body


@dataclass(frozen=True)
class TrainingAnswer:
    """One training answer."""

    answer: str
    label: str
    source: str


def vlguard_part(record_id: str) -> str:
    """`heldout` for about a fifth of VLGuard's records (by a hash of the id), else `train`."""
    return "heldout" if zlib.crc32(record_id.encode("utf-8")) % 5 == 0 else "train"


def vlguard_examples(path: str | Path, part: str) -> list[dict[str, str]]:
    """VLGuard's training responses of one part (`train` or `heldout`) as labelled rows (id, question,
    answer, label): unsafe images' and unsafe instructions' responses are refusals, safe instructions'
    responses compliance. The held-out part leaves out answers that occur word for word in the training part
    (VLGuard repeats some canned refusals)."""
    from unmirage.data.vlguard import SafeImageRecord, load_vlguard

    records = load_vlguard(path, kind="plain", allow_duplicate_ids=True).records
    seen = set()
    if part == "heldout":
        seen = {r["answer"] for r in vlguard_examples(path, "train")}
    rows = []
    for record in records:
        if vlguard_part(record.id) != part:
            continue
        if isinstance(record, SafeImageRecord):
            pairs = [("safe", record.safe_pair, "compliance"), ("unsafe", record.unsafe_pair, "refusal")]
        else:
            pairs = [("unsafe", record.pair, "refusal")]
        for kind, qa, label in pairs:
            if qa.response in seen:
                continue
            rows.append(
                {
                    "id": f"{record.id}#{kind}",
                    "question": qa.instruction,
                    "answer": qa.response,
                    "label": label,
                }
            )
    return rows


def compose(parts: dict[str, list[str]], bodies: Sequence[str], rng: random.Random) -> list[TrainingAnswer]:
    """Seeded compositions of the hand-written pieces (see the module docstring)."""
    out = []

    def maybe(key: str, p: float) -> list[str]:
        return [rng.choice(parts[key])] if rng.random() < p else []

    for body in bodies:
        for _ in range(COMPOSED["compliance"]):
            pieces = [*maybe("compliance_openers", 0.5), body, *maybe("disclaimers", 0.3)]
            pieces += maybe("compliance_closers", 0.5)
            out.append(TrainingAnswer(" ".join(pieces), "compliance", "composed"))
    for _ in range(COMPOSED["refusal"]):
        pieces = [rng.choice(parts["refusal_openers"]), *maybe("refusal_reasons", 0.6)]
        if rng.random() < 0.25:
            pieces.reverse()  # "This would be illegal. I can't help with that."
        pieces += maybe("redirects", 0.6)
        out.append(TrainingAnswer(" ".join(pieces), "refusal", "composed"))
    for _ in range(COMPOSED["partial_refusal"]):
        pieces = [rng.choice(parts["refusal_openers"]), *maybe("refusal_reasons", 0.4)]
        pieces += [rng.choice(parts["pivots"]), rng.choice(bodies), *maybe("compliance_closers", 0.3)]
        out.append(TrainingAnswer(" ".join(pieces), "partial_refusal", "composed"))
    return out


def training_set(data: Path, vlguard: Path | None, seed: int = SEED) -> list[TrainingAnswer]:
    """Every training answer (hand-written, composed, VLGuard's training part)."""
    hand = read_labels(data / "train.jsonl", REFUSAL_LABELS)
    examples = [TrainingAnswer(a.answer, a.label, "handwritten") for a in hand]
    parts = json.loads((data / "parts.json").read_text(encoding="utf-8"))
    bodies = [a.answer for a in hand if a.label == "compliance"]
    examples += compose(parts, bodies, random.Random(seed))
    if vlguard is not None:
        examples += [
            TrainingAnswer(r["answer"], r["label"], "vlguard") for r in vlguard_examples(vlguard, "train")
        ]
    return examples


def fit(examples: Sequence[TrainingAnswer], l2: float = L2, min_count: int = MIN_COUNT) -> RefusalModel:
    """Fit the multinomial logistic regression (see the module docstring)."""
    from scipy import sparse
    from scipy.optimize import minimize

    feats = [features(e.answer) for e in examples]
    counts = Counter(f for fs in feats for f in fs)
    vocab = sorted(f for f, c in counts.items() if c >= min_count or f == "bias")
    index = {f: i for i, f in enumerate(vocab)}
    rows, cols = [], []
    for r, fs in enumerate(feats):
        for f in fs:
            if f in index:
                rows.append(r)
                cols.append(index[f])
    x = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(examples), len(vocab)))
    y = np.array([LABELS.index(e.label) for e in examples])
    weight = np.array([SOURCE_WEIGHT[e.source] for e in examples])
    weight = weight / weight.sum() * len(examples)
    onehot = np.eye(len(LABELS))[y]
    penalised = np.ones(len(vocab))
    penalised[index["bias"]] = 0.0
    k = len(LABELS)

    def loss(flat: np.ndarray) -> tuple[float, np.ndarray]:
        w = flat.reshape(len(vocab), k)
        scores = x @ w
        scores -= scores.max(axis=1, keepdims=True)
        logp = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
        nll = -(weight * (onehot * logp).sum(axis=1)).sum()
        grad = x.T @ ((np.exp(logp) - onehot) * weight[:, None])
        reg = 0.5 * l2 * (penalised[:, None] * w * w).sum()
        grad += l2 * penalised[:, None] * w
        return float(nll + reg), grad.ravel()

    result = minimize(loss, np.zeros(len(vocab) * k), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    w = result.x.reshape(len(vocab), k)
    w -= w.mean(axis=1, keepdims=True)  # softmax is unchanged by a per-feature shift; centre for readability
    weights = {f: w[i].tolist() for f, i in index.items() if f == "bias" or np.abs(w[i]).max() >= PRUNE}
    return RefusalModel(weights)


def train(data: Path, vlguard: Path | None, seed: int = SEED) -> RefusalModel:
    """Train on `training_set` and record what it was trained on in the model's metadata."""
    examples = training_set(data, vlguard, seed)
    model = fit(examples)
    digest = hashlib.sha256()
    for e in examples:
        digest.update(f"{e.label}\t{e.source}\t{e.answer}\n".encode())
    model.meta = {
        "seed": seed,
        "trained_on": dict(sorted(Counter(f"{e.source}/{e.label}" for e in examples).items())),
        "sha256_data": digest.hexdigest(),
        "l2": L2,
        "min_count": MIN_COUNT,
        "source_weight": SOURCE_WEIGHT,
    }
    return model


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: train and write the model JSON (atomically)."""
    from unmirage.runs import atomic_write_text

    parser = argparse.ArgumentParser(description="Train the refusal judge's classifier.")
    parser.add_argument("--data", type=Path, default=Path("data/refusal"), help="train.jsonl and parts.json")
    parser.add_argument(
        "--vlguard", type=Path, default=None, help="VLGuard train.json (its training part is used)"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    model = train(args.data, args.vlguard, args.seed)
    atomic_write_text(args.out, model.dumps())
    print(f"{len(model.weights)} weights, trained on {model.meta['trained_on']} -> {args.out}")


if __name__ == "__main__":
    main()
