"""pytest hooks that turn `pytest exercises` into a grader.

    pytest exercises                    grade your code in exercises/
    pytest exercises --impl=solutions   grade the model answers
    pytest exercises --impl=PATH        grade any folder laid out like exercises/
    pytest exercises --grade-json FILE  also write the results as JSON
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

import grader

OUTPUT_LIMIT = 500  # characters of captured output kept per test, as Exercism does


def pytest_addoption(parser):
    group = parser.getgroup("grading", "Sidecar Lab grading")
    group.addoption(
        "--impl", metavar="PATH", default=None,
        help="folder laid out like exercises/ whose code is graded (default: exercises/)",
    )
    group.addoption(
        "--grade-json", metavar="FILE", default=None,
        help="write per-test results in the shape of Exercism's results.json (version 3)",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "task(taskno, points=1): the README step a graded test checks, and its points"
    )
    impl = config.getoption("--impl")
    if impl is not None:
        root = (config.invocation_params.dir / impl).resolve()
        if not root.is_dir():
            raise pytest.UsageError(f"--impl={impl}: {root} is not a folder")
        grader.impl_root = root
    config.stash[RESULTS] = []


RESULTS = pytest.StashKey[list]()
LEARNER_MESSAGE = pytest.StashKey[str]()


def task_of(item) -> tuple[int | None, int]:
    marker = item.get_closest_marker("task")
    if marker is None:
        return None, 0
    return marker.kwargs.get("taskno"), marker.kwargs.get("points", 1)


def learner_facing(item):
    """Run a test phase, turning the learner's unfinished code into a message, not a traceback."""
    try:
        return (yield)
    except NotImplementedError as error:
        message = grader.describe_not_implemented(error)
    except grader.LearnerCodeProblem as problem:
        message = str(problem)
    finally:
        grader.current_step = None
    # Failing outside the except block keeps the original traceback out of the report.
    item.stash[LEARNER_MESSAGE] = message
    pytest.fail(message, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    grader.current_step = task_of(item)[0]
    return (yield from learner_facing(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    grader.current_step = task_of(item)[0]
    return (yield from learner_facing(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or not report.passed:
        record(item, call, report)
    return report


def record(item, call, report) -> None:
    step, points = task_of(item)
    if report.passed:
        status, message = "pass", None
    elif report.skipped:
        status, message = "fail", f"skipped: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr}"
    elif LEARNER_MESSAGE in item.stash:
        status, message = "fail", item.stash[LEARNER_MESSAGE]
    elif report.when == "call" and call.excinfo.errisinstance(AssertionError):
        status, message = "fail", failure_message(report)
    else:
        status, message = "error", failure_message(report)
    results = item.config.stash[RESULTS]
    # One result per test: a failing teardown after a passing call replaces the pass.
    results[:] = [r for r in results if r.name != item.nodeid]
    results.append(
        grader.Result(
            exercise=Path(item.fspath).parent.name,
            name=item.nodeid,
            step=step,
            points=points,
            status=status,
            message=message,
            output=(report.capstdout or None) and report.capstdout[:OUTPUT_LIMIT],
            test_code=source_of(item),
        )
    )


def failure_message(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    return str(report.longrepr)


def source_of(item) -> str | None:
    try:
        return inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return None


# Wraps pytest's own summary from outside, so the scoreboard is the last thing a learner sees.
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, config):
    yield
    results = config.stash.get(RESULTS, [])
    if not results:
        return
    terminalreporter.write_sep("=", f"grades for {grader.display(grader.impl_root)}")
    for line in grader.scoreboard(grader.scores(results)):
        terminalreporter.write_line(line)


def pytest_sessionfinish(session):
    path = session.config.getoption("--grade-json")
    if not path:
        return
    data = grader.results_json(session.config.stash.get(RESULTS, []), collection_errors(session))
    target = session.config.invocation_params.dir / path
    target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def collection_errors(session) -> list[str]:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return []
    return [
        f"{report.nodeid}: {report.longreprtext}"
        for report in reporter.stats.get("error", [])
        if isinstance(report, pytest.CollectReport)
    ]
