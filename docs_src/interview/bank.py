"""Load and validate the interview question bank, `bank.toml`, next to this file.

The bank is the single source for the interview pages, the self-quiz and the flashcard deck.
A mistake in it fails loudly here, naming the question, instead of rendering a half-empty card.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BANK_PATH = Path(__file__).with_name("bank.toml")

# Display order. Levels say what the interviewer checks: knowing the patterns (junior),
# applying them to one system (senior), reasoning across rollout, failure and teams (staff).
LEVELS: tuple[str, ...] = ("junior", "senior", "staff")

TOPICS: tuple[str, ...] = (
    "The two patterns",
    "Kubernetes lifecycle",
    "DaemonSets and node agents",
    "Traffic management",
    "Resilience",
    "Control plane and config sync",
    "Istio sidecar and ambient",
    "Security and identity",
    "Observability",
    "Operations and cost",
    "Multi-tenancy and access control",
    "Distributed systems",
    "System design",
)

ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")


class BankError(ValueError):
    """The bank file is malformed; the message names the question and the field."""


@dataclass(frozen=True)
class WrongAnswer:
    """A common wrong answer and why it costs the candidate."""

    claim: str
    why: str


@dataclass(frozen=True)
class Question:
    """One interview question with its model answer, follow-up and traps."""

    id: str
    level: str
    topic: str
    question: str
    answer: str
    follow_up_question: str
    follow_up_answer: str
    wrong_answers: tuple[WrongAnswer, ...]
    sources: tuple[str, ...] = ()


def _text(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BankError(f"{where}: `{key}` is missing or empty")
    return value.strip()


def _question(entry: dict[str, Any], index: int) -> Question:
    raw_id = entry.get("id")
    where = f"question #{index + 1}" + (f" ({raw_id!r})" if raw_id else "")
    qid = _text(entry, "id", where)
    if not set(qid) <= ID_CHARS or qid.startswith("-"):
        raise BankError(f"{where}: `id` must be a slug of a-z, 0-9 and '-'")
    where = f"question {qid!r}"

    level = _text(entry, "level", where)
    if level not in LEVELS:
        raise BankError(f"{where}: unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    topic = _text(entry, "topic", where)
    if topic not in TOPICS:
        raise BankError(f"{where}: unknown topic {topic!r}; add it to TOPICS in bank.py first")

    follow_up = entry.get("follow_up")
    if not isinstance(follow_up, dict):
        raise BankError(f"{where}: `follow_up` is missing (a table with `question` and `answer`)")
    fu_question = _text(follow_up, "question", f"{where}, follow_up")
    fu_answer = _text(follow_up, "answer", f"{where}, follow_up")

    wrong = entry.get("wrong_answers")
    if not isinstance(wrong, list) or not wrong:
        raise BankError(f"{where}: needs at least one entry in `wrong_answers`")
    wrong_answers = []
    for n, item in enumerate(wrong, start=1):
        if not isinstance(item, dict):
            raise BankError(f"{where}: wrong_answers #{n} must be a table with `claim` and `why`")
        wrong_answers.append(WrongAnswer(
            claim=_text(item, "claim", f"{where}, wrong_answers #{n}"),
            why=_text(item, "why", f"{where}, wrong_answers #{n}"),
        ))

    sources = entry.get("sources", [])
    if not isinstance(sources, list) or not all(
        isinstance(url, str) and url.startswith("https://") for url in sources
    ):
        raise BankError(f"{where}: `sources` must be a list of https:// URLs")

    known = {"id", "level", "topic", "question", "answer", "follow_up", "wrong_answers", "sources"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise BankError(f"{where}: unknown field(s) {', '.join(unknown)}")

    return Question(
        id=qid,
        level=level,
        topic=topic,
        question=_text(entry, "question", where),
        answer=_text(entry, "answer", where),
        follow_up_question=fu_question,
        follow_up_answer=fu_answer,
        wrong_answers=tuple(wrong_answers),
        sources=tuple(sources),
    )


def parse_bank(data: dict[str, Any]) -> list[Question]:
    """Validate an already-parsed bank document and return its questions in file order."""
    entries = data.get("question")
    if not isinstance(entries, list) or not entries:
        raise BankError("the bank has no [[question]] entries")
    questions = [_question(entry, i) for i, entry in enumerate(entries)]
    seen: set[str] = set()
    for question in questions:
        if question.id in seen:
            raise BankError(f"question {question.id!r}: duplicate id; ids must be unique")
        seen.add(question.id)
    return questions


def load_bank(path: str | Path | None = None) -> list[Question]:
    """Read and validate the bank (by default `bank.toml` next to this module)."""
    path = Path(path) if path is not None else BANK_PATH
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise BankError(f"{path}: not valid TOML: {error}") from error
    try:
        return parse_bank(data)
    except BankError as error:
        raise BankError(f"{path}: {error}") from None


def by_level(questions: Iterable[Question]) -> dict[str, list[Question]]:
    """Questions grouped by level, in LEVELS order, each group in bank order."""
    groups: dict[str, list[Question]] = {level: [] for level in LEVELS}
    for question in questions:
        groups[question.level].append(question)
    return groups


def by_topic(questions: Iterable[Question]) -> dict[str, list[Question]]:
    """Questions grouped by topic, in TOPICS order, empty topics left out."""
    groups: dict[str, list[Question]] = {topic: [] for topic in TOPICS}
    for question in questions:
        groups[question.topic].append(question)
    return {topic: group for topic, group in groups.items() if group}
