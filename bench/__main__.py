"""`python -m bench`: run the lab's scenarios on loopback and write results, tables and charts.

    python -m bench                       every scenario, full length (make bench)
    python -m bench --quick               short runs, fewer points (make bench QUICK=1)
    python -m bench --only data_path      one scenario (repeat --only for more)
    python -m bench --render              redraw tables and charts from an existing results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import harness
from .report import render
from .scenario import SCENARIOS

DEFAULT_OUT = Path("docs/lab/results")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs and fewer points (about a minute)")
    parser.add_argument("--only", action="append", metavar="NAME", choices=list(SCENARIOS),
                        help=f"run only this scenario; one of: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for results.json, <scenario>.md and the SVGs (default: %(default)s)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: re-render the Markdown and SVG from OUT/results.json")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads((args.out / "results.json").read_text())
        for path in render(results, args.out):
            print(path)
        return 0
    results = harness.run(args.only, quick=args.quick, out=args.out)
    failed = [name for name, entry in results["scenarios"].items() if "error" in entry]
    for name in failed:
        print(f"\n{name} failed:\n{results['scenarios'][name]['traceback']}", file=sys.stderr)
    print(f"results in {args.out}/ ({', '.join(results['scenarios'])})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
