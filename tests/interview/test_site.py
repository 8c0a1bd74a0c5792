"""The built site carries the interview pages and the Anki deck the hook generates."""

from __future__ import annotations

import html
import re

import markdown
import pytest

from docs_src.interview.bank import load_bank


@pytest.fixture(scope="module")
def bank():
    return load_bank()


def page_text(path) -> str:
    """A page's visible text, tags removed and whitespace collapsed."""
    raw = re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8"))
    return " ".join(html.unescape(raw).split())


def plain(text: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markdown.markdown(text))).split())


def test_the_deck_has_one_card_of_three_fields_per_question(interview_site, bank):
    deck = interview_site / "interview" / "sidecar-lab-anki.txt"
    assert deck.exists(), "the hook did not put sidecar-lab-anki.txt into the site"
    cards = [line for line in deck.read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")]
    assert len(cards) == len(bank)
    bad = [n for n, card in enumerate(cards, 1) if len(card.split("\t")) != 3]
    assert bad == [], f"cards without exactly 3 tab-separated fields: {bad}"


def test_the_questions_page_shows_every_question(interview_site, bank):
    page = interview_site / "interview" / "questions" / "index.html"
    source = page.read_text(encoding="utf-8")
    text = page_text(page)
    for q in bank:
        assert f'id="q-{q.id}"' in source, f"no anchor for {q.id}"
        assert plain(q.question) in text, f"question {q.id} is missing from questions.md"


def test_the_quiz_numbers_every_question_with_a_box_to_tick(interview_site, bank):
    source = (interview_site / "interview" / "quiz" / "index.html").read_text(encoding="utf-8")
    numbers = [int(n) for n in re.findall(r"<strong>(\d+)\.</strong>", source)]
    assert numbers == list(range(1, len(bank) + 1))
    boxes = re.findall(r'<input type="checkbox"[^>]*>', source)
    assert len(boxes) == len(bank)
    assert not any("disabled" in box for box in boxes), "quiz boxes must be clickable"


def test_the_front_page_and_the_quiz_link_to_the_deck(interview_site):
    # The links are raw HTML, which MkDocs does not validate, so check where they land.
    deck = (interview_site / "interview" / "sidecar-lab-anki.txt").resolve()
    for page in ("interview/index.html", "interview/quiz/index.html"):
        path = interview_site / page
        tags = re.findall(r"<a\s[^>]*>", path.read_text(encoding="utf-8"))
        hrefs = [re.search(r'href="([^"]*)"', tag).group(1) for tag in tags
                 if re.search(r"\bdownload\b", tag) and "sidecar-lab-anki.txt" in tag]
        assert hrefs, f"{page} has no download link to the deck"
        for href in hrefs:
            assert (path.parent / href).resolve() == deck, f"{page} links to {href}, not the deck"


def test_the_cheat_sheet_indexes_topics_into_the_questions_page(interview_site):
    source = (interview_site / "interview" / "cheat-sheet" / "index.html").read_text(encoding="utf-8")
    assert "interview:topics" not in source, "the topic index marker was not replaced"
    assert re.search(r'href="\.\./questions/#junior-the-two-patterns"', source)
    assert 'class="mermaid"' in source
