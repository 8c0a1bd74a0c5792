"""`python -m reference COMPONENT ...`: run one of the reference systems.

    python -m reference controlplane --help
    python -m reference sidecar --help
    python -m reference nodeagent --help
    python -m reference app --help
    python -m reference demo sidecar|nodeagent [--duration SECONDS]
"""

from __future__ import annotations

import importlib
import sys

COMPONENTS = {
    "controlplane": ("reference.controlplane.__main__", "versioned config store, HTTP and gRPC APIs"),
    "sidecar": ("reference.sidecar.__main__", "one proxy per app instance"),
    "nodeagent": ("reference.nodeagent.__main__", "one agent per host, serving every local app"),
    "app": ("reference.app.__main__", "the sample reviews app (v1, v2, v3)"),
    "demo": ("reference.demo", "start everything on loopback and watch it work"),
}


def usage() -> str:
    lines = ["usage: python -m reference COMPONENT [ARGS...]", "", "components:"]
    lines += [f"  {name:<13} {summary}" for name, (_, summary) in COMPONENTS.items()]
    lines += ["", "Each component takes --help."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMPONENTS:
        print(f"unknown component {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMPONENTS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
