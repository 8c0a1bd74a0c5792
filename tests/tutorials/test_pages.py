"""The tutorial pages include every step file, and highlight exactly what each step changed."""

from __future__ import annotations

import ast
import difflib
import re
from pathlib import Path

import pytest

from tests.tutorials.conftest import STEPS, step

ROOT = Path(__file__).resolve().parents[2]
PAGES = {"controlplane": "control-plane.md", "sidecar": "sidecar.md", "nodeagent": "node-agent.md"}

# ```python title="docs_src/..." hl_lines="3 18-20"   then   --8<-- "docs_src/..."
BLOCK = re.compile(
    r'^```python title="(?P<title>[^"]+)"(?: hl_lines="(?P<hl>[^"]*)")?\n'
    r'--8<-- "(?P<path>[^"]+)"\n```\n(?P<after>(?:\n|(?:\d+\.  .*\n|    .*\n))*)',
    re.MULTILINE,
)
ANNOTATION = re.compile(r"# \((\d+)\)!")


def step_path(tutorial: str, name: str) -> str:
    return f"docs_src/tutorials/{tutorial}/{name}.py"


def changed_lines(old: str, new: str) -> list[int]:
    """1-based numbers of the lines of `new` that are added or changed since `old`."""
    matcher = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
    lines: list[int] = []
    for tag, _, _, j1, j2 in matcher.get_opcodes():
        if tag in ("insert", "replace"):
            lines.extend(range(j1 + 1, j2 + 1))
    return lines


def parse_hl_lines(spec: str) -> list[int]:
    """`"3 18-20"` -> [3, 18, 19, 20]."""
    lines: list[int] = []
    for part in spec.split():
        first, _, last = part.partition("-")
        lines.extend(range(int(first), int(last or first) + 1))
    return lines


def blocks(tutorial: str) -> list[re.Match[str]]:
    text = (ROOT / "docs" / "tutorials" / PAGES[tutorial]).read_text()
    return [match for match in BLOCK.finditer(text) if match["path"].startswith("docs_src/")]


@pytest.mark.parametrize("tutorial", PAGES)
def test_the_page_includes_every_step_once_in_order_under_its_own_title(tutorial: str) -> None:
    found = [(match["title"], match["path"]) for match in blocks(tutorial)]
    expected = [(step_path(tutorial, name),) * 2 for name in STEPS[tutorial]]
    assert found == expected, f"docs/tutorials/{PAGES[tutorial]} should include each step once"


@pytest.mark.parametrize("tutorial", PAGES)
def test_hl_lines_mark_exactly_the_lines_changed_since_the_previous_step(tutorial: str) -> None:
    previous = None
    for match in blocks(tutorial):
        text = (ROOT / match["path"]).read_text()
        total = len(text.splitlines())
        highlighted = parse_hl_lines(match["hl"] or "")
        assert all(1 <= line <= total for line in highlighted), f"{match['path']}: past the end"
        if previous is None:
            assert not highlighted, f"{match['path']}: the first step has nothing to compare to"
        else:
            expected = changed_lines(previous, text)
            assert highlighted == expected, (
                f"{match['path']}: hl_lines should be {format_ranges(expected)!r}"
            )
        previous = text


@pytest.mark.parametrize("tutorial", PAGES)
def test_every_code_annotation_in_an_included_file_has_its_note(tutorial: str) -> None:
    for match in blocks(tutorial):
        markers = {int(n) for n in ANNOTATION.findall((ROOT / match["path"]).read_text())}
        notes = {int(n) for n in re.findall(r"^(\d+)\.  ", match["after"], re.MULTILINE)}
        assert markers <= notes, f"{match['path']}: no note for annotation(s) {markers - notes}"


@pytest.mark.parametrize("tutorial", PAGES)
def test_consecutive_steps_differ_and_each_is_a_small_app_factory(tutorial: str) -> None:
    texts = [(ROOT / step_path(tutorial, name)).read_text() for name in STEPS[tutorial]]
    for before, after, name in zip(texts, texts[1:], STEPS[tutorial][1:]):
        assert changed_lines(before, after), f"{name} adds nothing to the step before it"
    for name, text in zip(STEPS[tutorial], texts):
        assert callable(getattr(step(tutorial, name), "create_app", None)), name
        assert len(text.splitlines()) <= 200, f"{name} is too long for one step"


@pytest.mark.parametrize("tutorial", PAGES)
def test_servers_start_only_under_the_main_guard(tutorial: str) -> None:
    for name in STEPS[tutorial]:
        tree = ast.parse((ROOT / step_path(tutorial, name)).read_text())
        for node in tree.body:
            guarded = isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
            if guarded:
                continue
            calls = {ast.unparse(call.func) for call in ast.walk(node)
                     if isinstance(call, ast.Call)}
            assert not calls & {"web.run_app", "asyncio.run"}, f"{name}: starts at import"


def format_ranges(lines: list[int]) -> str:
    """[3, 18, 19, 20] -> `"3 18-20"`, the hl_lines spelling."""
    parts: list[str] = []
    for line in lines:
        if parts and line == last + 1:
            first = parts[-1].partition("-")[0]
            parts[-1] = f"{first}-{line}"
        else:
            parts.append(str(line))
        last = line
    return " ".join(parts)


def test_format_ranges_and_parse_hl_lines_round_trip() -> None:
    assert format_ranges([3, 18, 19, 20]) == "3 18-20"
    assert parse_hl_lines("3 18-20") == [3, 18, 19, 20]


if __name__ == "__main__":  # print the hl_lines each page needs
    for tutorial_name, names in STEPS.items():
        sources = [(ROOT / step_path(tutorial_name, name)).read_text() for name in names]
        for name, old, new in zip(names[1:], sources, sources[1:]):
            print(tutorial_name, name, format_ranges(changed_lines(old, new)))
