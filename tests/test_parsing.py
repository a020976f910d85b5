"""Tolerant parsers of model output: fences, stray text, truncation -> value or a reason code."""

from __future__ import annotations

import pytest

from r2i.parsing import (
    ParseError,
    extract_answer,
    extract_answer_tag,
    extract_boxed,
    first_option_letter,
    normalize_answer,
    parse_consensus,
    parse_distractors,
    parse_numbered_list,
    parse_questions,
    parse_validation,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{7}", "7"),
        (r"\boxed{first} then \boxed{second}", "second"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{ Orange }.", "Orange"),
        (r"\fbox{x}", "x"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text", ["no box here", r"\boxed{unterminated", ""])
def test_extract_boxed_missing(text):
    with pytest.raises(ParseError) as err:
        extract_boxed(text)
    assert err.value.reason == "no_boxed"


def test_numbered_list_variants():
    text = 'Objects:\n\\boxed{1. red clock\n2) "blue bike"\n3. sign reading "EXIT"\n3. Red Clock}'
    assert parse_numbered_list(text) == ["red clock", "blue bike", 'sign reading "EXIT"']
    assert parse_numbered_list("- a cup\n- a key\n* a bell") == ["a cup", "a key", "a bell"]
    with pytest.raises(ParseError):
        parse_numbered_list("I cannot see any objects.")


@pytest.mark.parametrize(
    "text",
    [
        '[{"question": "What color is the cup?"}, {"question": "How many dots?"}]',
        'Sure!\n```json\n[{"question": "What color is the cup?"}, {"question": "How many dots?"}]\n```\nDone.',
        'Here: [{"question": "What color is the cup?"}, "How many dots?"] hope it helps',
        '{"questions": [{"question": "What color is the cup?"}, {"question": "How many dots?"}]}',
    ],
)
def test_parse_questions(text):
    assert parse_questions(text) == ["What color is the cup?", "How many dots?"]


def test_parse_questions_empty_and_broken():
    assert parse_questions("[]") == []
    with pytest.raises(ParseError):
        parse_questions('[{"question": "What col')  # truncated reply


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("VALID: Yes\nREASON: clear.", True),
        ("valid: no\nreason: two cups", False),
        ("**VALID:** Yes", True),
        ("VALID：Yes", True),
    ],
)
def test_parse_validation(text, valid):
    assert parse_validation(text)[0] is valid


def test_parse_validation_missing():
    with pytest.raises(ParseError):
        parse_validation("I think it is fine")


def test_parse_consensus_clamps_count():
    assert parse_consensus('```json\n{"majority_answer": "red", "count": 12}\n```', 8) == ("red", 8)
    assert parse_consensus('{"majority_answer": 3, "count": "6"}', 8) == ("3", 6)
    with pytest.raises(ParseError):
        parse_consensus('{"count": 3}', 8)


def test_parse_distractors():
    assert parse_distractors('{"distractors": ["blue", "green", 3]}') == ["blue", "green", "3"]
    assert parse_distractors('["a", "b"]') == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>hm</think><answer>B</answer>", "B"),
        ("<answer> (C) red </answer>", "(C) red"),
        ("no tags", None),
        # several blocks: the FIRST counts (the reference's rule, in reward and evaluation alike)
        ("<answer>A</answer> wait <answer>D</answer>", "A"),
        # an <answer> written while thinking does not count
        ("<think>maybe <answer>A</answer></think><answer>C</answer>", "C"),
        ("reasoning...</think><answer>D</answer>", "D"),
    ],
)
def test_answer_tag(text, expected):
    assert extract_answer_tag(text) == expected


@pytest.mark.parametrize(
    ("text", "answer", "source"),
    [
        ("I think...\n<answer>B</answer>", "B", "tag"),
        ("It is red.\n<answer>B", "B", "unclosed_tag"),
        ("The sign is red.\nAnswer: B. red", "B. red", "answer_line"),
        ("line1\nline2\nline3\nThe answer is B.", "line2\nline3\nThe answer is B.", "last_lines"),
        ("<think>Answer: A is tempting</think>\nIt must be C.", "It must be C.", "last_lines"),
        ("", None, None),
    ],
)
def test_extract_answer_falls_back_like_the_reference(text, answer, source):
    assert extract_answer(text) == (answer, source)


@pytest.mark.parametrize(
    ("answer", "letter"),
    [("B", "B"), ("(b)", "B"), ("C. red", "C"), ("Option D", "D"), ("[A]", "A"), ("Blue", None), ("", None)],
)
def test_first_option_letter(answer, letter):
    assert first_option_letter(answer) == letter


def test_normalize_answer():
    assert normalize_answer("The Three cats.") == "3 cats"
    assert normalize_answer("  ORANGE ") == normalize_answer("orange")
