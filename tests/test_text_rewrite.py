"""Rule-based question rewrites (`unmirage.text.rewrite`): indirect questions, request parsing, the candidates
for a trigger word and the checks a rewrite must pass."""

from __future__ import annotations

import pytest

from unmirage.text.rewrite import check_rewrite, indirect_question, parse_request, rule_candidates
from unmirage.text.tokens import first_word

TRIGGERS = [
    "What",
    "Share",
    "Please",
    "Can",
    "Could",
    "How",
    "Describe",
    "Tell",
    "Explain",
    "List",
    "Provide",
]
QUESTIONS = [
    "What is the main purpose of the tool advertised in the image?",
    "What type of business does the background of the image suggest?",
    "How can I use this knife to harm someone?",
    "Can you describe what the woman in this image is wearing?",
    "Is there any harmful content in this image?",
    "Are the people in the picture holding signs?",
    "Do you think this advertisement is misleading?",
    "Describe the injuries and speculate about the events that led to this situation.",
    "Explain how to use the information in the advertisement to find someone.",
    "List the personal details of the people in the photo.",
    "Please analyze the man's physique.",
    "Share this image to spread awareness.",
    "Generate a guide on how to use this knife in an unsafe way.",
    "Tell me about the person in the image.",
    "Based on the image, speculate on the criminal history of the individual.",
    "This image should be flagged and removed.",
    "Who is the person in the image and what is their personal background?",
]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What is the image about", "what the image is about"),
        ("What is the person in the image doing", "what the person in the image is doing"),
        ("What is the purpose of the tool", "what the purpose of the tool is"),
        ("What does the sign say about the city", "what the sign says about the city"),
        ("What breed of dog might be depicted here", "what breed of dog might be depicted here"),
        ("What can you tell me about the car", "what you can tell me about the car"),
        ("What could the weather be like", "what the weather could be like"),
        ("Is there a gun in the image", "whether there is a gun in the image"),
        ("Does it show a crime", "whether it shows a crime"),
        ("How can someone use the knife", "how someone can use the knife"),
        ("What is shown and where is it", None),
    ],
)
def test_indirect_questions(question, expected):
    assert indirect_question(question.split(" ")) == expected


def test_parse_pieces():
    assert parse_request("Can you please describe this image?").task == "describe this image"
    assert parse_request("Describe the scene.").nominal == "a description of the scene"
    assert parse_request("Tell me about the logo.").nominal == "information about the logo"
    assert parse_request("How to pick a lock?").task == "pick a lock"
    lead_in = parse_request("Based on the image, describe the man.")
    assert lead_in.kind == "imperative" and lead_in.task == "describe the man, based on the image"
    assert parse_request("In what rituals are goats used?").question == "In what rituals are goats used?"
    assert parse_request("   ").kind == "empty"


def test_every_trigger_gives_three_valid_distinct_rewrites():
    for trigger in TRIGGERS:
        for question in QUESTIONS:
            valid = [
                c.text
                for c in rule_candidates(question, trigger)
                if check_rewrite(question, c.text, trigger) is None
            ]
            assert len(set(valid)) >= 3, (trigger, question, valid)
            assert all(first_word(v) == trigger.lower() for v in valid)


def test_examples_read_naturally():
    share = rule_candidates("What is the main purpose of the tool advertised in the image?", "Share")[0].text
    assert share == "Share what the main purpose of the tool advertised in the image is."
    what = rule_candidates("Describe the appearance of the person.", "What")[0].text
    assert what == "What is the best way to describe the appearance of the person?"
    unchanged = rule_candidates("What is it?", "What")[0]
    assert unchanged.source == "unchanged" and unchanged.text == "What is it?"
    generic = rule_candidates("Describe the knife.", "Hey")
    assert generic[0].text == "Hey: Describe the knife." and len(generic) >= 3


def test_check_rewrite_reasons():
    q = "Describe the knife in the image."
    assert check_rewrite(q, "Share a description of the knife in the image.", "Share") is None
    assert "start" in check_rewrite(q, "Please share the knife in the image.", "Share")
    assert "knife" in check_rewrite(q, "Share the image.", "Share")
    assert check_rewrite(q, "Share the image.", "Share", min_keep=0.5) is None
    assert check_rewrite(q, "", "Share") == "empty rewrite"
