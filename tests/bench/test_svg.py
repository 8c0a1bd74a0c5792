"""The hand-written charts: round ticks, readable labels, escaped text, the same bytes every time."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

from bench.progress import Progress
from bench.svg import Series, bar_chart, line_chart, nice_ticks, number


def test_ticks_start_at_zero_and_step_by_round_numbers_past_the_highest_value():
    assert nice_ticks(37_000) == [0, 10_000, 20_000, 30_000, 40_000]
    assert nice_ticks(0.83) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(185) == [0, 50, 100, 150, 200]
    assert nice_ticks(0) == [0.0, 1.0]


def test_numbers_are_labelled_with_separators_and_few_decimals():
    assert number(31334.2) == "31,334"
    assert number(56.66) == "56.7"
    assert number(0.167) == "0.167"
    assert number(0.2) == "0.2"
    assert number(0) == "0"


def test_text_from_the_results_is_escaped_so_the_svg_stays_well_formed():
    svg = bar_chart(title="a < b & c", x_label="x (s)", y_label="y (ms)", categories=["<one>"],
                    series=[Series("p50 & p99", [1.0])])
    root = ET.fromstring(svg)
    assert root.find("{http://www.w3.org/2000/svg}title").text == "a < b & c"


def test_the_same_numbers_give_the_same_bytes():
    def draw() -> str:
        return line_chart(title="t", x_label="N", y_label="MB", x=[1, 5, 10],
                          series=[Series("a", [1.0, 5.0, 10.0]), Series("b", [2.0, 2.0, 2.0])])

    assert draw() == draw()


def test_progress_prints_one_plain_line_per_step_when_not_on_a_terminal():
    stream = io.StringIO()
    progress = Progress("demo", 2, stream)
    with progress.step("first"):
        pass
    with progress.step("second"):
        pass
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[:2] == ["demo [1/2] first", "demo [2/2] second"]
    assert lines[2].startswith("demo: done, 2/2 steps in ")
    assert "\r" not in stream.getvalue()
