"""The grader, run as a learner runs it: on the stubs, on the solutions, and on broken copies."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXERCISES = ROOT / "exercises"
SOLUTIONS = ROOT / "solutions"
sys.path.insert(0, str(EXERCISES))
import grader  # noqa: E402  (the grader's library, to read the READMEs the way it does)


def exercise_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and re.match(r"\d\d_", p.name))


def graded_modules(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.py") if not p.name.startswith("test_") and p.name != "conftest.py"}


class Grading:
    def __init__(self, process: subprocess.CompletedProcess, results: dict, seconds: float):
        self.process = process
        self.results = results
        self.seconds = seconds
        self.output = process.stdout + process.stderr

    def tests(self, exercise: str | None = None) -> list[dict]:
        return [t for t in self.results["tests"] if exercise in (None, t["exercise"])]


def grade(tmp_path: Path, impl: Path | None = None) -> Grading:
    report = tmp_path / f"results-{time.monotonic_ns()}.json"
    command = [sys.executable, "-m", "pytest", "exercises", "-p", "no:cacheprovider",
               f"--grade-json={report}"]
    if impl is not None:
        command.append(f"--impl={impl}")
    started = time.monotonic()
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert report.exists(), f"the grader wrote no results:\n{process.stdout[-3000:]}{process.stderr[-3000:]}"
    return Grading(process, json.loads(report.read_text()), seconds)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Grading:
    return grade(tmp_path_factory.mktemp("stubs"))


@pytest.fixture(scope="module")
def solutions(tmp_path_factory) -> Grading:
    return grade(tmp_path_factory.mktemp("solutions"), SOLUTIONS)


def test_there_are_exercises_to_grade():
    assert len(exercise_dirs(EXERCISES)) >= 4


def test_exercises_and_solutions_mirror_each_other_file_for_file():
    assert [p.name for p in exercise_dirs(EXERCISES)] == [p.name for p in exercise_dirs(SOLUTIONS)]
    for exercise in exercise_dirs(EXERCISES):
        solution = SOLUTIONS / exercise.name
        assert graded_modules(exercise) == graded_modules(solution), exercise.name
        assert graded_modules(exercise), f"{exercise.name} has no module to fill in"


def test_every_graded_test_is_tied_to_a_readme_step_and_every_step_is_graded(solutions):
    for exercise in exercise_dirs(EXERCISES):
        steps = grader.read_steps(exercise / "README.md")
        assert len(steps) >= 3, f"{exercise.name}: README needs at least 3 numbered steps"
        assert sorted(steps) == list(range(1, len(steps) + 1)), f"{exercise.name}: steps are not 1..N"
        assert all(step.hint for step in steps.values()), f"{exercise.name}: every step needs a hint"
        tests = solutions.tests(exercise.name)
        assert tests, f"{exercise.name} has no graded tests"
        untied = [t["name"] for t in tests if t["task_id"] not in steps]
        assert untied == [], f"tests without a README step: {untied}"
        assert {t["task_id"] for t in tests} == set(steps), f"{exercise.name}: a step has no test"
        assert all(t["points"] >= 1 for t in tests)


def test_grading_the_untouched_stubs_fails_every_test_with_a_learner_message(stubs):
    assert stubs.results["status"] == "fail", stubs.results["message"]
    assert stubs.tests(), "no graded test ran"
    not_failed = [(t["name"], t["status"]) for t in stubs.tests() if t["status"] != "fail"]
    assert not_failed == [], f"on the stubs every graded test must fail, not: {not_failed}"
    for test in stubs.tests():
        assert re.match(r"step \d+ (is not implemented yet|needs step \d+ first|needs `)", test["message"] or ""), (
            f"{test['name']}: a learner should read which step is unfinished, not: {test['message']}"
        )
    assert "Traceback" not in stubs.output and "ImportError" not in stubs.output


def test_the_stubs_score_zero_and_the_scoreboard_fits_80_columns(stubs):
    assert all(e["points"] == 0 and e["steps_passed"] == 0 for e in stubs.results["exercises"])
    board = stubs.process.stdout.split("grades for", 1)[1].splitlines()[1:]
    board = board[: next(i for i, line in enumerate(board) if line.startswith(" total")) + 1]
    assert len(board) >= 3 * len(exercise_dirs(EXERCISES)), "each exercise needs a score, a next step and a hint"
    assert max(len(line) for line in board) <= 80, "\n".join(board)
    assert sum("hint:" in line for line in board) == len(exercise_dirs(EXERCISES))


def test_grading_the_solutions_passes_everything_in_under_ten_seconds(solutions):
    assert solutions.process.returncode == 0, solutions.output[-4000:]
    assert solutions.results["status"] == "pass"
    failing = [(t["name"], t["message"]) for t in solutions.tests() if t["status"] != "pass"]
    assert failing == []
    assert all(e["points"] == e["points_total"] for e in solutions.results["exercises"])
    # Wall time of the whole subprocess, interpreter start included; the budget is the
    # project's promise to learners that grading is quick.
    assert solutions.seconds < 10, f"grading the solutions took {solutions.seconds:.1f} s"


def test_a_syntax_error_is_reported_per_test_without_a_collection_error(tmp_path):
    broken = tmp_path / "impl"
    shutil.copytree(EXERCISES, broken, ignore=shutil.ignore_patterns("__pycache__"))
    first = exercise_dirs(broken)[0]
    module = sorted(graded_modules(first))[0]
    (first / module).write_text("def half_written(:\n")
    grading = grade(tmp_path, broken)
    assert grading.results["status"] == "fail", grading.results["message"]
    for test in grading.tests(first.name):
        assert test["status"] == "fail"
        assert "cannot start" in test["message"] and "SyntaxError at line 1" in test["message"], test["message"]


# Each mutation breaks one behaviour of a reference module; grading the mutated copy must fail
# exactly the step that owns that behaviour and pass every other step of that exercise.
MUTATIONS = [
    pytest.param(
        "02_weighted_routing", "weighted_router",
        "if self._current[i] > self._current[best]:",
        "if self._current[i] >= self._current[best]:",
        3, id="round-robin-ties-go-to-the-later-item",
    ),
]


@pytest.mark.parametrize("exercise, module, original, mutated, broken_step", MUTATIONS)
def test_a_deliberately_broken_copy_fails_the_step_it_broke(
    tmp_path, exercise, module, original, mutated, broken_step
):
    copy = tmp_path / "impl"
    shutil.copytree(SOLUTIONS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    source = (ROOT / "reference" / f"{module}.py").read_text()
    assert source.count(original) == 1, f"the mutation no longer applies to reference/{module}.py"
    (copy / exercise / f"{module}.py").write_text(source.replace(original, mutated))
    grading = grade(tmp_path, copy)
    by_step: dict[int, set[str]] = {}
    for test in grading.tests(exercise):
        by_step.setdefault(test["task_id"], set()).add(test["status"])
    assert "fail" in by_step.pop(broken_step), f"step {broken_step} should fail on the broken copy"
    assert all(statuses == {"pass"} for statuses in by_step.values()), by_step
    board = grading.process.stdout.split("grades for", 1)[1]
    assert f"next: step {broken_step}," in board
