"""The grader's library: loads the code being graded, reads the exercise READMEs, keeps score.

The pytest hooks that use it live in exercises/conftest.py. Graded test files import only
`learner` from here:

    from grader import learner
    breaker = learner(__file__, "breaker")

`breaker` is a lazy stand-in for the module being graded: nothing is imported until a test
asks for a name, so an unfinished or broken file never stops the other tests from running.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

EXERCISES = Path(__file__).resolve().parent
STEP_HEADING = re.compile(r"^## (\d+)\. (.+?)\s*$")
HINT_HEADING = re.compile(r"^### Step (\d+)\b")
SECTION_MARKER = re.compile(r"--8<--")

# Set by conftest.py: the folder laid out like exercises/ whose code is graded, and the step
# of the test running now (for messages that say which step needs what).
impl_root: Path = EXERCISES
current_step: int | None = None


class LearnerCodeProblem(Exception):
    """The code being graded is missing, does not import, or lacks a name a test needs."""


def step_phrase() -> str:
    return f"step {current_step}" if current_step is not None else "this exercise"


def display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class LearnerModule:
    """Stands in for `<impl>/<exercise>/<module>.py` and imports it on first use."""

    def __init__(self, exercise: str, module: str) -> None:
        self._exercise = exercise
        self._module = module

    @property
    def _path(self) -> Path:
        return impl_root / self._exercise / f"{self._module}.py"

    def _load(self) -> ModuleType:
        path = self._path
        cached = _loaded.get(path)
        if isinstance(cached, ModuleType):
            return cached
        if cached is not None:
            raise LearnerCodeProblem(f"{step_phrase()} cannot start: {cached}")
        if not path.exists():
            raise LearnerCodeProblem(
                f"{step_phrase()} needs {display(path)}, which does not exist. "
                f"Is --impl pointing at a folder laid out like exercises/?"
            )
        name = f"_graded_{self._exercise}_{self._module}_{len(_loaded)}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # the learner's code may raise anything at import
            del sys.modules[name]
            _loaded[path] = f"importing {display(path)} failed: {describe_import_error(error)}"
            raise LearnerCodeProblem(f"{step_phrase()} cannot start: {_loaded[path]}") from None
        _loaded[path] = module
        return module

    def __getattr__(self, name: str):
        # Dunders and pytest's probes must not import the learner's code during collection.
        if name.startswith("__") and name not in ("__file__", "__name__"):
            raise AttributeError(name)
        if name == "__file__":
            return str(self._path)
        module = self._load()
        try:
            return getattr(module, name)
        except AttributeError:
            raise LearnerCodeProblem(
                f"{step_phrase()} needs `{name}` in {display(self._path)}; is it defined?"
            ) from None

    def __repr__(self) -> str:
        return f"<graded module {display(self._path)}>"


_loaded: dict[Path, ModuleType | str] = {}


def learner(test_file: str, module: str) -> LearnerModule:
    """Return a lazy stand-in for `module` of the exercise that `test_file` belongs to."""
    return LearnerModule(Path(test_file).resolve().parent.name, module)


def describe_import_error(error: BaseException) -> str:
    if isinstance(error, SyntaxError):
        return f"SyntaxError at line {error.lineno}: {error.msg}"
    return f"{type(error).__name__}: {error}"


def describe_not_implemented(error: NotImplementedError) -> str:
    """Say where the learner's code still raises NotImplementedError, and for which step."""
    frame = None
    tb = error.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(impl_root):
            frame = tb
        tb = tb.tb_next
    where, owner = "", None
    if frame is not None:
        code = frame.tb_frame.f_code
        qualname = getattr(code, "co_qualname", code.co_name)
        where = f"`{qualname}` ({display(Path(code.co_filename))}:{frame.tb_lineno}) "
        owner = todo_step(code)
    detail = f": {error}" if str(error) and str(error) not in where else ""
    unfinished = f"{where}still raises NotImplementedError{detail}"
    if owner is not None and current_step is not None and owner != current_step:
        # A later step's test ran into an earlier step's stub: point at the step to do first.
        return f"step {current_step} needs step {owner} first, which is not implemented yet: {unfinished}"
    return f"{step_phrase()} is not implemented yet: {unfinished}"


TODO_STEP = re.compile(r"TODO\(step (\d+)\)")


def todo_step(code) -> int | None:
    """The step named by the `TODO(step N)` comment in a stub function, if it has one."""
    try:
        lines, _ = inspect.getsourcelines(code)
    except (OSError, TypeError):
        return None
    found = TODO_STEP.search("".join(lines))
    return int(found.group(1)) if found else None


# ---------------------------------------------------------------------------------------------
# READMEs: steps are `## N. Title`; hints are `### Step N` paragraphs under `## Hints`.


@dataclass
class Step:
    number: int
    title: str
    hint: str = ""


def read_steps(readme: Path) -> dict[int, Step]:
    """Return the numbered steps of an exercise README, each with its hint."""
    steps: dict[int, Step] = {}
    hint_for: int | None = None
    hint_lines: dict[int, list[str]] = {}
    for line in readme.read_text(encoding="utf-8").splitlines():
        if heading := STEP_HEADING.match(line):
            number = int(heading.group(1))
            steps[number] = Step(number, heading.group(2))
            hint_for = None
        elif heading := HINT_HEADING.match(line):
            hint_for = int(heading.group(1))
            hint_lines[hint_for] = []
        elif line.startswith("#"):
            hint_for = None
        elif hint_for is not None and not SECTION_MARKER.search(line):
            hint_lines[hint_for].append(line)
    for number, lines in hint_lines.items():
        if number in steps:
            steps[number].hint = " ".join(" ".join(lines).split())
    return steps


# ---------------------------------------------------------------------------------------------
# Score keeping.


@dataclass
class Result:
    exercise: str
    name: str
    step: int | None
    points: int
    status: str  # pass, fail or error, as in Exercism's results.json
    message: str | None = None
    output: str | None = None
    test_code: str | None = None


@dataclass
class ExerciseScore:
    slug: str
    steps: dict[int, Step]
    results: list[Result] = field(default_factory=list)

    def step_passed(self, number: int) -> bool:
        mine = [r for r in self.results if r.step == number]
        return bool(mine) and all(r.status == "pass" for r in mine)

    @property
    def steps_passed(self) -> int:
        return sum(self.step_passed(n) for n in self.steps)

    @property
    def points(self) -> int:
        return sum(r.points for r in self.results if r.status == "pass")

    @property
    def points_total(self) -> int:
        return sum(r.points for r in self.results)

    def first_failing_step(self) -> Step | None:
        return next((self.steps[n] for n in sorted(self.steps) if not self.step_passed(n)), None)


def scores(results: list[Result]) -> list[ExerciseScore]:
    by_slug: dict[str, ExerciseScore] = {}
    for result in results:
        if result.exercise not in by_slug:
            readme = EXERCISES / result.exercise / "README.md"
            steps = read_steps(readme) if readme.exists() else {}
            by_slug[result.exercise] = ExerciseScore(result.exercise, steps)
        by_slug[result.exercise].results.append(result)
    return [by_slug[slug] for slug in sorted(by_slug)]


WIDTH = 79


def scoreboard(exercise_scores: list[ExerciseScore]) -> list[str]:
    """Render the scores as lines of at most 79 characters."""
    lines = []
    for score in exercise_scores:
        number, _, slug = score.slug.partition("_")
        title = f"{number} {slug.replace('_', ' ')}"
        total_steps = len(score.steps)
        bar = "".join("#" if score.step_passed(n) else "." for n in sorted(score.steps))
        done = "  done" if score.steps_passed == total_steps and total_steps else ""
        lines.append(
            f" {title:<30} [{bar}]".ljust(44)
            + f"steps {score.steps_passed}/{total_steps}  points {score.points:>3}/{score.points_total}{done}"
        )
        step = score.first_failing_step()
        if step is not None:
            lines.append(f"    next: step {step.number}, {step.title}"[:WIDTH])
            if step.hint:
                lines += textwrap.wrap(
                    step.hint, WIDTH, initial_indent="    hint: ", subsequent_indent="          "
                )
    earned = sum(s.points for s in exercise_scores)
    possible = sum(s.points_total for s in exercise_scores)
    lines.append(" total".ljust(60) + f"points {earned:>3}/{possible}")
    return lines


def results_json(results: list[Result], collection_errors: list[str]) -> dict:
    """Exercism's test-runner results.json, version 3, with each test's exercise and points."""
    if collection_errors:
        status = "error"
    elif results and all(r.status == "pass" for r in results):
        status = "pass"
    else:
        status = "fail"
    return {
        "version": 3,
        "status": status,
        "message": "\n".join(collection_errors) or None,
        "tests": [
            {
                "name": r.name,
                "status": r.status,
                "message": r.message,
                "output": r.output,
                "test_code": r.test_code,
                "task_id": r.step,
                "exercise": r.exercise,
                "points": r.points,
            }
            for r in results
        ],
        "exercises": [
            {
                "slug": s.slug,
                "steps_passed": s.steps_passed,
                "steps_total": len(s.steps),
                "points": s.points,
                "points_total": s.points_total,
            }
            for s in scores(results)
        ],
    }
