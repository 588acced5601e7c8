"""`unmirage analyze probe`: the logistic probe, its per-form scores, layer indexing and the command."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import run_cli, safe_record, unsafe_record, write_json
from unmirage.analysis.probe import (
    FeatureCache,
    evaluation_forms,
    fit_probe,
    form_scores,
    layer_features,
    parse_layers,
)
from unmirage.data.conversations import Example, single_turn
from unmirage.data.requests import read_request_labels
from unmirage.errors import UnmirageError
from unmirage.stats import wilson_interval


def test_fit_probe_separates_a_separable_toy_and_is_symmetric():
    # 1-D, mirror-symmetric data: the fitted boundary is x = 0 (bias 0), P rises with x
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    y = torch.tensor([0, 0, 1, 1])
    probe = fit_probe(x, y, l2=0.1)
    p = probe.prob(x)
    assert abs(probe.bias) < 1e-6 and probe.weight[0] > 0
    # the optimum by hand: standardised z = x / std = +-0.632, +-1.265; by symmetry the loss is
    # mean_z log(1 + exp(-w z)) + l2/2 w^2 over z in {0.632, 1.265}, so mean_z z sigmoid(-w z) = l2 w
    w, z = float(probe.weight[0]), torch.tensor([1.0, 2.0], dtype=torch.float64) / 2.5**0.5
    assert float((z * torch.sigmoid(-w * z)).mean()) == pytest.approx(0.1 * w, abs=1e-7)
    assert ((p > 0.5).long() == y).all()
    assert torch.allclose(p[:2], 1 - p.flip(0)[:2], atol=1e-9)
    # two well-separated clouds in 20 dimensions, unequal class sizes: 100% on held-out points too
    g = torch.Generator().manual_seed(0)
    direction = torch.zeros(20)
    direction[3] = 10.0
    train = torch.randn(60, 20, generator=g)
    labels = (torch.arange(60) < 15).long()
    train[labels == 1] += direction
    held = torch.randn(40, 20, generator=g) + direction * (torch.arange(40) < 20).unsqueeze(1)
    probe = fit_probe(train, labels, l2=1e-2)
    assert ((probe.prob(train) > 0.5).long() == labels).all()
    assert ((probe.prob(held) > 0.5).long() == (torch.arange(40) < 20).long()).all()
    again = fit_probe(train, labels, l2=1e-2)
    assert torch.equal(probe.weight, again.weight)  # deterministic


def test_fit_probe_errors():
    with pytest.raises(UnmirageError, match="both classes"):
        fit_probe(torch.zeros(3, 2), torch.ones(3))
    with pytest.raises(UnmirageError, match="features for"):
        fit_probe(torch.zeros(3, 2), torch.ones(2))


def test_form_scores_by_hand():
    prob = torch.tensor([0.9, 0.7, 0.6, 0.2], dtype=torch.float64)
    harmful = form_scores(prob, 1)  # 3 of 4 above 0.5
    assert harmful["correct"] == 3 and harmful["accuracy"] == 0.75 and harmful["n"] == 4
    assert harmful["accuracy_ci"] == list(wilson_interval(0.75, 4))
    assert harmful["mean_p_forget"] == pytest.approx(0.6)
    safe = form_scores(prob, 0)  # only 0.2 is on the retain side
    assert safe["correct"] == 1 and safe["accuracy"] == 0.25
    assert form_scores(torch.tensor([0.5]), 1)["correct"] == 0  # 0.5 is not "forget"
    assert form_scores(torch.empty(0), 1)["accuracy"] is None


def test_parse_layers():
    assert parse_layers(None, 4) == [0, 1, 2, 3]
    assert parse_layers(["3", "0-1", "-1"], 4) == [0, 1, 3]
    assert parse_layers(["0,2"], 30) == [0, 2]
    for bad, message in ((["4"], "out of range"), (["x"], "cannot read"), (["-5"], "out of range")):
        with pytest.raises(UnmirageError, match=message):
            parse_layers(bad, 4)


@pytest.fixture(scope="module")
def stand_in():
    from helpers import stand_in_smollm2
    from unmirage.models.families import get_family
    from unmirage.models.load import LoadedModel

    model, tok = stand_in_smollm2()
    return LoadedModel(model=model, processor=tok, family=get_family("causal"), source="stand-in")


def test_layer_k_is_the_output_of_decoder_layer_k_before_the_final_norm(stand_in):
    from unmirage.data.collate import Collator

    model = stand_in.model
    n = model.config.num_hidden_layers
    examples = [
        Example(id=str(i), question=q, answer="") for i, q in enumerate(["Hi?", "What is a long question?"])
    ]
    collate = Collator(stand_in, template="chat").encode_prompts
    features = layer_features(stand_in, examples, list(range(n)), collate, pool="last", batch_size=2)
    batch = collate(examples)
    with torch.no_grad():
        states = model(**batch, output_hidden_states=True).hidden_states
    last = batch["attention_mask"].sum(1) - 1
    rows = torch.arange(2)
    for k in range(n - 1):  # hidden_states[k + 1] is layer k's output for every layer but the last
        assert torch.allclose(features[:, k], states[k + 1][rows, last], atol=1e-5)
    # the last entry of hidden_states has the final norm applied; the probe's last layer does not
    assert not torch.allclose(features[:, n - 1], states[n][rows, last], atol=1e-3)
    with torch.no_grad():
        normed = model.model.norm(features[:, n - 1])
    assert torch.allclose(normed, states[n][rows, last], atol=1e-5)
    # right padding never changes a row: alone or in a padded batch, the same numbers
    alone = layer_features(stand_in, examples[:1], [0, n - 1], collate, pool="mean", batch_size=1)
    padded = layer_features(stand_in, examples, [0, n - 1], collate, pool="mean", batch_size=2)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_feature_cache_computes_each_question_once():
    calls: list[int] = []

    def compute(examples, _what):
        calls.append(len(examples))
        return torch.tensor([[[float(len(e.question))]] for e in examples])

    cache = FeatureCache(compute)
    a, b = Example(id="a", question="x", answer=""), Example(id="b", question="yy", answer="")
    assert cache([a, b], "one")[:, 0, 0].tolist() == [1.0, 2.0]
    assert cache([b, a, b], "two")[:, 0, 0].tolist() == [2.0, 1.0, 2.0]
    assert calls == [2]


def test_evaluation_forms_use_the_rule_rewrites(tmp_path):
    records = [
        safe_record("s0", q="Describe the cake in the picture."),
        unsafe_record("u0", q="Describe how to make poison."),
        unsafe_record("u1", q="What is the poison?"),
    ]
    forms = {f.name: f for f in evaluation_forms(write_json(tmp_path / "t.json", records))}
    assert list(forms) == ["unsafe", "unsafe_what", "safe", "safe_share"]
    assert [f.label for f in forms.values()] == [1, 1, 0, 0]
    assert all(e.question.split()[0] == "What" for e in forms["unsafe_what"].examples)
    assert [e.id for e in forms["unsafe_what"].examples] == ["u0#what", "u1#what"]
    assert forms["safe_share"].examples[0].question.startswith("Share")
    limited = evaluation_forms(tmp_path / "t.json", limit=1, seed=3)
    assert len(limited[0].examples) == 1 and limited[0].examples[0].id == limited[1].examples[0].id[:2]
    # attack files: their rewrites of the drawn questions (every shot), as extra forms
    what = [unsafe_record(i, q=f"What about {i} {k}?") for i in ("u0", "u1", "u7") for k in range(2)]
    share = [safe_record("s0", q="Share the cake."), safe_record("s5", q="Share more.")]
    forms = evaluation_forms(
        tmp_path / "t.json",
        what=write_json(tmp_path / "w.json", what),
        share=write_json(tmp_path / "s.json", share),
    )
    by = {f.name: f for f in forms}
    assert [f.name for f in forms] == [
        "unsafe",
        "unsafe_what",
        "unsafe_attack",
        "safe",
        "safe_share",
        "safe_attack",
    ]
    assert [e.id for e in by["unsafe_attack"].examples] == [
        "u0#attack0",
        "u0#attack1",
        "u1#attack0",
        "u1#attack1",
    ]
    assert by["unsafe_attack"].label == 1 and by["safe_attack"].label == 0
    assert [e.question for e in by["safe_attack"].examples] == ["Share the cake."]
    # request labels: the unsafe forms keep only the requests labelled harmful; the safe forms are untouched
    labels = tmp_path / "requests.jsonl"
    rows = [("u0", None, True), ("u1", None, False), ("u0", 1, True), ("u1", 0, True), ("u0", 0, False)]
    labels.write_text("".join(json.dumps({"id": i, "shot": k, "harmful": h}) + "\n" for i, k, h in rows))
    forms = evaluation_forms(
        tmp_path / "t.json",
        what=tmp_path / "w.json",
        share=tmp_path / "s.json",
        requests=read_request_labels(labels),
    )
    by = {f.name: f for f in forms}
    assert [e.id for e in by["unsafe"].examples] == ["u0"]
    assert [e.id for e in by["unsafe_what"].examples] == ["u0#what"]
    assert [e.id for e in by["unsafe_attack"].examples] == ["u0#attack1", "u1#attack0"]
    assert [e.id for e in by["safe"].examples] == ["s0"] and len(by["safe_attack"].examples) == 1


TOPICS = ("poison", "bread")
VERBS = ("Describe how to make", "Explain how to prepare", "Tell me how to cook", "List the steps to make")
PLACES = ("at home", "in a kitchen", "for a party", "quickly", "cheaply", "with friends")


def _toy(tmp_path):
    """Forget questions ask about poison, retain ones about bread, in the same phrasings."""
    sets = {}
    for side, topic in zip(("forget", "retain"), TOPICS):
        rows = [
            single_turn(f"{side}{i}", None, f"{verb} {topic} {place}.", "Answer.").to_json()
            for i, (verb, place) in enumerate((v, p) for v in VERBS[:3] for p in PLACES)
        ]
        sets[side] = write_json(tmp_path / f"{side}.json", rows)
    test = [
        unsafe_record(f"u{i}", q=f"{VERBS[3]} {TOPICS[0]} {place}.") for i, place in enumerate(PLACES)
    ] + [safe_record(f"s{i}", q=f"{VERBS[3]} {TOPICS[1]} {place}.") for i, place in enumerate(PLACES)]
    return sets["forget"], sets["retain"], write_json(tmp_path / "test.json", test)


def test_probe_command_on_a_separable_toy(tmp_path, capsys, stand_in):
    model_dir = tmp_path / "lm"
    stand_in.model.save_pretrained(model_dir)
    stand_in.tokenizer.save_pretrained(model_dir)
    forget, retain, test = _toy(tmp_path)
    argv = ["analyze", "probe", "--model", str(model_dir), "--forget", str(forget), "--retain", str(retain)]
    argv += ["--data", str(test), "--pool", "mean", "--layers", "0,-1", "--out", str(tmp_path / "out")]
    result = run_cli(argv, capsys)
    assert result.code == 0, result.err
    probe = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert probe["settings"]["layers"] == [0, 1] and probe["settings"]["pool"] == "mean"
    assert "before the final norm" in probe["settings"]["representation"]
    assert probe["n"]["plain"] == {"forget": 18, "retain": 18}
    assert probe["n"]["form_blind"]["forget"] > 18  # + What and Share rewrites
    for name in ("plain", "form_blind"):
        for layer in ("0", "1"):
            row = probe["probes"][name][layer]
            assert row["train_accuracy"] == 1.0
            # the topic word separates the classes in every phrasing: the probe must get every original right
            for form in ("unsafe", "safe"):
                assert row["forms"][form]["accuracy"] == 1.0 and row["forms"][form]["n"] == 6
    assert (tmp_path / "out" / "probe.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["command"] == "analyze probe"
    # deterministic: a second run into another folder writes the same numbers
    argv[-1] = str(tmp_path / "again")
    assert run_cli(argv, capsys).code == 0
    assert json.loads((tmp_path / "again" / "probe.json").read_text())["probes"] == probe["probes"]


def test_probe_command_errors(tmp_path, capsys):
    forget, retain, test = _toy(tmp_path)
    base = ["analyze", "probe", "--model", "tiny-llava", "--forget", str(forget), "--retain", str(retain)]
    result = run_cli([*base, "--data", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")], capsys)
    assert result.code == 2 and "--data: file not found" in result.err
    result = run_cli([*base, "--data", str(test), "--layers", "9", "--out", str(tmp_path / "o")], capsys)
    assert result.code == 2 and "layer 9 is out of range" in result.err
    result = run_cli([*base, "--data", str(test), "--pool", "max", "--out", str(tmp_path / "p")], capsys)
    assert result.code == 2 and "pool must be one of last, mean" in result.err
    assert not (tmp_path / "p").exists()  # refused before anything is written
