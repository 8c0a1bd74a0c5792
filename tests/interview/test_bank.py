"""The question bank loads, is complete, and the loader rejects a broken bank clearly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docs_src.interview.bank import LEVELS, TOPICS, BankError, load_bank

MIN_QUESTIONS = 60
MIN_PER_LEVEL = 15

VALID_ENTRY = """
[[question]]
id = "{id}"
level = "{level}"
topic = "The two patterns"
question = "What is a sidecar?"
answer = "A helper next to one app instance."
{follow_up}
[[question.wrong_answers]]
claim = "Any second container."
why = "It must support the main one."
"""
FOLLOW_UP = 'follow_up.question = "And a node agent?"\nfollow_up.answer = "One per node."\n'


@pytest.fixture(scope="module")
def bank():
    return load_bank()


def write_bank(tmp_path: Path, *entries: str) -> Path:
    path = tmp_path / "bank.toml"
    path.write_text("\n".join(entries), encoding="utf-8")
    return path


def entry(id="a-question", level="junior", follow_up=FOLLOW_UP) -> str:
    return VALID_ENTRY.format(id=id, level=level, follow_up=follow_up)


def test_bank_has_enough_questions_at_every_level(bank):
    assert len(bank) >= MIN_QUESTIONS, f"the bank has {len(bank)} questions; it needs {MIN_QUESTIONS}"
    for level in LEVELS:
        count = sum(1 for q in bank if q.level == level)
        assert count >= MIN_PER_LEVEL, f"{level} has {count} questions; it needs {MIN_PER_LEVEL}"


def test_every_question_has_an_answer_a_follow_up_and_wrong_answers(bank):
    for q in bank:
        assert q.question and q.answer, q.id
        assert q.follow_up_question and q.follow_up_answer, q.id
        assert q.wrong_answers, q.id
        assert all(w.claim and w.why for w in q.wrong_answers), q.id


def test_ids_are_unique_slugs(bank):
    ids = [q.id for q in bank]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", i) for i in ids)


def test_every_topic_is_used(bank):
    assert {q.topic for q in bank} == set(TOPICS)


def test_a_question_with_numbers_cites_sources(bank):
    # Digits in link targets and code spans are paths and names, not claims.
    def claims(text: str) -> str:
        return re.sub(r"`[^`]*`|\[[^\]]*\]\([^)]*\)", "", text)

    for q in bank:
        text = " ".join([q.question, q.answer, q.follow_up_question, q.follow_up_answer]
                        + [w.claim + " " + w.why for w in q.wrong_answers])
        if re.search(r"\d", claims(text)):
            assert q.sources, f"{q.id} states numbers but lists no sources"
        assert all(url.startswith("https://") for url in q.sources), q.id


def test_the_loader_names_the_question_missing_a_follow_up(tmp_path):
    path = write_bank(tmp_path, entry(id="good-one"), entry(id="no-follow-up", follow_up=""))
    with pytest.raises(BankError, match=r"question 'no-follow-up'.*follow_up"):
        load_bank(path)


def test_the_loader_rejects_a_duplicate_id(tmp_path):
    path = write_bank(tmp_path, entry(id="twice"), entry(id="twice"))
    with pytest.raises(BankError, match=r"question 'twice': duplicate id"):
        load_bank(path)


def test_the_loader_rejects_an_unknown_level(tmp_path):
    path = write_bank(tmp_path, entry(id="too-high", level="principal"))
    with pytest.raises(BankError, match=r"question 'too-high': unknown level 'principal'"):
        load_bank(path)


def test_the_loader_rejects_a_question_without_wrong_answers(tmp_path):
    text = entry(id="no-traps").split("[[question.wrong_answers]]")[0]
    with pytest.raises(BankError, match=r"question 'no-traps': needs at least one entry in `wrong_answers`"):
        load_bank(write_bank(tmp_path, text))


def test_the_loader_rejects_an_empty_answer(tmp_path):
    text = entry(id="blank").replace('answer = "A helper next to one app instance."', 'answer = "  "')
    with pytest.raises(BankError, match=r"question 'blank': `answer` is missing or empty"):
        load_bank(write_bank(tmp_path, text))
