"""MkDocs hook: render the interview question bank into the interview pages and a flashcard deck.

Registered in mkdocs.yml with `hooks: [tools/interview_hook.py]`. The bank,
docs_src/interview/bank.toml, is the only place a question is written; this hook turns it into

- interview/questions.md: every question, grouped by level then topic, answers collapsed;
- interview/quiz.md: a self-quiz, each level in a fixed shuffled order, one tick box per question;
- interview/cheat-sheet.md: a topic index, where the page asks for one;
- interview/sidecar-lab-anki.txt: an Anki deck in Anki's plain-text import format.

Each page marks where the generated Markdown goes with a marker line. Output depends only on
the bank (no clock, no unseeded randomness, no network), so two builds give the same bytes.
"""

from __future__ import annotations

import html
import random
import re
import sys
from pathlib import Path

import markdown as python_markdown
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # MkDocs loads a hook by file path, so the repository root is not always importable.
    sys.path.insert(0, str(ROOT))

from docs_src.interview.bank import (  # noqa: E402  (needs the path set above)
    BANK_PATH,
    LEVELS,
    BankError,
    Question,
    by_level,
    by_topic,
    load_bank,
)

BANK_MARKER = "<!-- interview:bank -->"
TOPICS_MARKER = "<!-- interview:topics -->"
QUESTIONS_PAGE = "interview/questions.md"
QUIZ_PAGE = "interview/quiz.md"
CHEAT_SHEET_PAGE = "interview/cheat-sheet.md"
DECK_URI = "interview/sidecar-lab-anki.txt"
DECK_NAME = "Sidecar Lab"
QUIZ_SEED = "sidecar-lab-quiz"

_bank: list[Question] = []


# --- MkDocs events ---------------------------------------------------------------------------

def on_files(files, config):
    """Load the bank for this build and add the deck to the site's files."""
    global _bank
    try:
        _bank = load_bank()
    except BankError as error:
        raise PluginError(f"interview bank: {error}") from error
    # A generated file rather than one written in on_post_build: MkDocs copies it into the
    # site like a docs file, `mkdocs serve` serves it, and no stale copy survives a rebuild.
    # The pages link to it with raw HTML, so a build without this hook still passes --strict.
    files.append(File.generated(config, DECK_URI, content=anki_deck(_bank)))
    return files


def on_page_markdown(markdown, page, config, files):
    uri = page.file.src_uri
    if uri == QUESTIONS_PAGE:
        return _replace(markdown, BANK_MARKER, questions_markdown(_bank), uri, required=True)
    if uri == QUIZ_PAGE:
        return _replace(markdown, BANK_MARKER, quiz_markdown(_bank), uri, required=True)
    if uri == CHEAT_SHEET_PAGE:
        return _replace(markdown, TOPICS_MARKER, topic_index_markdown(_bank), uri, required=False)
    return markdown


def on_page_content(html_text, page, config, files):
    # pymdownx.tasklist renders disabled boxes unless clickable_checkbox is set site-wide;
    # the quiz is the one page whose boxes the reader is meant to tick.
    if page.file.src_uri == QUIZ_PAGE:
        return _TASK_BOX.sub(lambda m: m.group(0).replace(m.group(1), ""), html_text)
    return html_text


def on_serve(server, config, builder):
    server.watch(str(BANK_PATH))
    return server


# --- Markdown for the pages ------------------------------------------------------------------

_TASK_BOX = re.compile(r'<input type="checkbox"[^>]*?(\s+disabled(?:="[^"]*")?)[^>]*>')


def _replace(markdown: str, marker: str, generated: str, uri: str, *, required: bool) -> str:
    lines = markdown.splitlines()
    hits = [i for i, line in enumerate(lines) if line.strip() == marker]
    if not hits:
        if required:
            raise PluginError(f"{uri}: the marker line {marker} is missing")
        return markdown
    if len(hits) > 1:
        raise PluginError(f"{uri}: the marker line {marker} appears {len(hits)} times")
    i = hits[0]
    return "\n".join(lines[:i] + [generated] + lines[i + 1:]) + "\n"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else "" for line in text.splitlines())


def _badge(text: str) -> str:
    return f'<span class="md-tag">{html.escape(text)}</span>'


def _source_label(url: str) -> str:
    return url.removeprefix("https://").removeprefix("www.").rstrip("/")


def _details(kind: str, title: str, body: str, indent: int = 0) -> str:
    block = f'??? {kind} "{title}"\n{_indent(body, 4)}'
    return _indent(block, indent) if indent else block


def _follow_up(question: Question) -> str:
    return f"*{question.follow_up_question}*\n\n{question.follow_up_answer}"


def _wrong_answers(question: Question) -> str:
    return "\n".join(f"- **{w.claim}** {w.why}" for w in question.wrong_answers)


def _sources(question: Question) -> str:
    return "\n".join(f"- [{_source_label(url)}]({url})" for url in question.sources)


def question_anchor(question: Question) -> str:
    return f"q-{question.id}"


def topic_anchor(level: str, topic: str) -> str:
    return f"{level}-{slug(topic)}"


def questions_markdown(bank: list[Question]) -> str:
    """Every question, grouped by level then topic, with its answer blocks collapsed."""
    out: list[str] = []
    for level, questions in by_level(bank).items():
        out.append(f"## {level.capitalize()} questions {{ #{level} }}\n")
        for topic, group in by_topic(questions).items():
            out.append(f"### {topic} {{ #{topic_anchor(level, topic)} }}\n")
            for q in group:
                out.append(f"**Q: {q.question}**\n{{ #{question_anchor(q)} }}\n")
                out.append(f"{_badge(level)} {_badge(topic)}\n")
                out.append(_details("success", "Model answer", q.answer) + "\n")
                out.append(_details("question", "Follow-up", _follow_up(q)) + "\n")
                out.append(_details("failure", "Common wrong answers", _wrong_answers(q)) + "\n")
                if q.sources:
                    out.append(_details("info", "Sources", _sources(q)) + "\n")
                out.append("---\n")
    return "\n".join(out)


def quiz_order(bank: list[Question]) -> dict[str, list[Question]]:
    """Each level's questions in a shuffled order that is the same on every build.

    The seed is a string per level, which `random` hashes the same way in every process, and
    the questions are sorted by id first, so moving a question inside bank.toml does not
    reshuffle its level.
    """
    order: dict[str, list[Question]] = {}
    for level, questions in by_level(bank).items():
        shuffled = sorted(questions, key=lambda q: q.id)
        random.Random(f"{QUIZ_SEED}:{level}").shuffle(shuffled)
        order[level] = shuffled
    return order


def quiz_markdown(bank: list[Question]) -> str:
    """Numbered questions with a tick box each and the answers collapsed."""
    out: list[str] = []
    number = 0
    for level, questions in quiz_order(bank).items():
        out.append(f"## {level.capitalize()} {{ #quiz-{level} }}\n")
        for q in questions:
            number += 1
            out.append(f"- [ ] **{number}.** {q.question} {_badge(q.topic)}\n")
            out.append(_details("success", "Model answer", q.answer, indent=4) + "\n")
            out.append(_details("question", "Follow-up", _follow_up(q), indent=4) + "\n")
            out.append(f"    [Traps and sources for this question](questions.md#{question_anchor(q)})\n")
    return "\n".join(out)


def topic_index_markdown(bank: list[Question]) -> str:
    """A table of topics against levels, each cell linking to that group of questions."""
    levels = by_level(bank)
    header = "| Topic | " + " | ".join(level.capitalize() for level in LEVELS) + " |"
    rule = "|---|" + "---:|" * len(LEVELS)
    rows = [header, rule]
    for topic in by_topic(bank):
        cells = []
        for level in LEVELS:
            count = sum(1 for q in levels[level] if q.topic == topic)
            anchor = topic_anchor(level, topic)
            cells.append(f"[{count}](questions.md#{anchor})" if count else "")
        rows.append(f"| {topic} | " + " | ".join(cells) + " |")
    totals = [str(len(levels[level])) for level in LEVELS]
    rows.append("| **All topics** | " + " | ".join(f"**{t}**" for t in totals) + " |")
    return "\n".join(rows) + "\n"


# --- The Anki deck ---------------------------------------------------------------------------

_PRE = re.compile(r"<pre>.*?</pre>", re.DOTALL)
# Links between site pages mean nothing inside Anki; keep their text, drop the link.
_RELATIVE_LINK = re.compile(r'<a href="(?!https?://)[^"]*">(.*?)</a>', re.DOTALL)


def _html(text: str) -> str:
    rendered = python_markdown.markdown(text, extensions=["tables"])
    rendered = _RELATIVE_LINK.sub(r"\1", rendered)
    # A deck line is one card, so no raw newlines: keep them as <br> inside code blocks and
    # as spaces elsewhere, where HTML treats them as spaces anyway.
    rendered = _PRE.sub(lambda m: m.group(0).replace("\n", "<br>"), rendered)
    return rendered.replace("\n", " ").replace("\t", " ").strip()


def _field(value: str) -> str:
    # Quoted like CSV so that a field starting with a quote mark is not misread.
    return '"' + value.replace('"', '""') + '"'


def anki_card(question: Question) -> str:
    front = _html(question.question)
    back = (
        _html(question.answer)
        + "<hr><p><b>Follow-up:</b> <i>" + _html(question.follow_up_question).removeprefix("<p>")
        .removesuffix("</p>") + "</i></p>"
        + _html(question.follow_up_answer)
    )
    tags = f"{question.level} {slug(question.topic)}"
    return "\t".join([_field(front), _field(back), tags])


def anki_deck(bank: list[Question]) -> str:
    """The deck in Anki's plain-text import format: a header, then one card per line."""
    header = ["#separator:tab", "#html:true", "#tags column:3", f"#deck:{DECK_NAME}"]
    cards = [anki_card(q) for level in LEVELS for q in by_level(bank)[level]]
    return "\n".join(header + cards) + "\n"
