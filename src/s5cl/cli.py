"""The command line every stage script shares: `--params params.yaml --set section.key=value`."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable

from s5cl import distributed
from s5cl.errors import UserError
from s5cl.params import Params, load_params


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def run_stage(name: str, main: Callable[[Params], str]) -> None:
    """Parse the shared command line, validate params, run `main`, print its one-line summary.

    A UserError ends in one line on stderr and exit code 2, not a traceback. Started by
    torchrun, a training stage runs as one of its processes (distributed.py); rank 0 prints.
    """
    parser = argparse.ArgumentParser(prog=f"stages/{name}.py", description=f"S5CL stage: {name}")
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one parameter (repeatable); the value is parsed as YAML",
    )
    args = parser.parse_args()
    warnings.showwarning = _warning_line
    start = time.perf_counter()
    try:
        params = load_params(args.params, args.overrides)
        with distributed.processes(name):
            summary = main(params)
            main_rank = distributed.is_main()
    except UserError as error:
        ranks = distributed.launched_processes()
        who = f" (rank {os.environ.get('RANK', 0)} of {ranks})" if ranks > 1 else ""
        print(f"{name}{who}: error: {error}", file=sys.stderr)
        sys.exit(2)
    if main_rank:
        print(f"{name}: {summary} [{time.perf_counter() - start:.1f}s]")
