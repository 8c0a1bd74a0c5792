"""Regenerate the Python code of every .proto in this folder.

    python reference/protos/generate.py              # rewrite the committed files
    python reference/protos/generate.py --out DIR    # write DIR/reference/protos/... instead

Equivalent to running, from the repository root, for each NAME.proto:

    python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
        reference/protos/NAME.proto

The include root is the repository root, so the generated code imports its siblings as
`from reference.protos import NAME_pb2`, which works wherever the package is installed.
The output depends on the exact grpcio-tools version, pinned in pyproject.toml for that reason;
tests/unit/test_protos_are_generated.py regenerates into a temp dir and diffs.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
ROOT = PROTOS.parent.parent  # the folder that holds reference/


def proto_files() -> list[Path]:
    """Every .proto in this folder, as paths relative to the repository root, sorted."""
    return sorted(path.relative_to(ROOT) for path in PROTOS.glob("*.proto"))


def generate(out: Path = ROOT) -> list[Path]:
    """Run protoc on every .proto into `out`; return the protos compiled. Raise on failure."""
    # grpcio-tools is a test-time dependency only: the generated code needs grpcio and protobuf.
    from grpc_tools import protoc

    # The well-known types (google/protobuf/*.proto) ship inside grpc_tools; `python -m
    # grpc_tools.protoc` adds them itself, protoc.main() does not.
    well_known = resources.files("grpc_tools") / "_proto"
    protos = proto_files()
    out.mkdir(parents=True, exist_ok=True)
    for proto in protos:
        args = [
            "grpc_tools.protoc",  # argv[0]: protoc ignores it
            f"-I{ROOT}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
    return protos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT,
        help="output root (default: the repository root, i.e. overwrite the committed files)",
    )
    args = parser.parse_args(argv)
    for proto in generate(args.out):
        print(f"generated {proto}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
