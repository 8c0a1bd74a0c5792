"""The manifests start components with flags those components really have."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from tests.deploy.manifests import ROOT, component, flags, long_running_containers

# A component's flags, from every container that runs it.
USED: dict[str, set[str]] = defaultdict(set)
for _doc, _container in long_running_containers():
    USED[component(_container)] |= flags(_container)

HELP_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def help_text(name: str) -> str:
    """`python -m reference.<name> --help`, or a skip while that component is not written yet."""
    module = f"reference.{name}.__main__"
    # The components are written alongside these manifests; until one lands, say so rather
    # than fail, and keep checking the others.
    if importlib.util.find_spec(f"reference.{name}") is None or importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist yet, so its flags cannot be checked")
    result = subprocess.run(
        [sys.executable, "-m", f"reference.{name}", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, f"`python -m reference.{name} --help` failed:\n{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("name", sorted(USED))
def test_container_args_use_only_flags_the_component_accepts(name):
    accepted = set(HELP_FLAG.findall(help_text(name)))
    unknown = sorted(USED[name] - accepted)
    assert not unknown, (
        f"the manifests pass {unknown} to `{name}`, whose --help lists only {sorted(accepted)}"
    )


def test_every_component_the_manifests_start_is_one_the_cli_knows():
    if importlib.util.find_spec("reference.__main__") is None:
        pytest.skip("reference/__main__.py (the `python -m reference` CLI) does not exist yet")
    from reference.__main__ import COMPONENTS

    assert set(USED) <= set(COMPONENTS)
