"""The hook's output is deterministic and complete, checked without building the site."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from docs_src.interview.bank import LEVELS, load_bank

HOOK = Path(__file__).resolve().parents[2] / "tools" / "interview_hook.py"


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("interview_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bank():
    return load_bank()


def test_the_deck_is_the_same_bytes_every_time(hook, bank):
    assert hook.anki_deck(bank) == hook.anki_deck(load_bank())


def test_the_deck_has_anki_headers_and_one_card_per_question(hook, bank):
    lines = hook.anki_deck(bank).splitlines()
    assert lines[:4] == ["#separator:tab", "#html:true", "#tags column:3", "#deck:Sidecar Lab"]
    cards = [line for line in lines if not line.startswith("#")]
    assert len(cards) == len(bank)
    for card, q in zip(cards, [q for level in LEVELS for q in bank if q.level == level]):
        front, back, tags = card.split("\t")
        assert front.startswith('"') and back.startswith('"')
        assert tags.split() == [q.level, hook.slug(q.topic)]
        assert "<a href=\"../" not in back, "links between site pages are dropped from cards"


def test_the_quiz_order_is_fixed_and_shuffled_within_each_level(hook, bank):
    first, second = hook.quiz_order(bank), hook.quiz_order(load_bank())
    assert [[q.id for q in first[level]] for level in LEVELS] == \
        [[q.id for q in second[level]] for level in LEVELS]
    for level in LEVELS:
        in_bank = [q.id for q in bank if q.level == level]
        assert sorted(q.id for q in first[level]) == sorted(in_bank)
        assert [q.id for q in first[level]] != sorted(in_bank), f"{level} is not shuffled"


def test_a_page_without_its_marker_fails_the_build(hook):
    from mkdocs.exceptions import PluginError

    with pytest.raises(PluginError, match="marker"):
        hook._replace("# Quiz\n", hook.BANK_MARKER, "generated", "interview/quiz.md", required=True)


def test_mkdocs_yml_registers_the_interview_hook():
    from mkdocs.config import load_config

    from tests.conftest import ROOT

    hooks = load_config(str(ROOT / "mkdocs.yml"))["hooks"]
    assert any("interview_hook" in name for name in hooks), f"mkdocs.yml should list tools/interview_hook.py under hooks: {list(hooks)}"
