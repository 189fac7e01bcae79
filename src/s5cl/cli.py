"""The command line every stage script shares: `--params params.yaml --set section.key=value`."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from s5cl import stages
from s5cl.errors import UserError
from s5cl.params import load_params


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def _processes() -> tuple[int, str]:
    """How many processes torchrun started (WORLD_SIZE; 1 without it), and this one's rank.
    Read from the environment: the data stages never import torch.distributed."""
    return int(os.environ.get("WORLD_SIZE", "1")), os.environ.get("RANK", "0")


def run_stage(name: str) -> None:
    """Parse the shared command line, validate params, run stage `name`'s function (from the
    stage table), print its one-line summary.

    A UserError ends in one line on stderr and exit code 2, not a traceback. Started by
    torchrun, a training stage runs as one of its processes (distributed.py); rank 0 prints.
    """
    stage = stages.get(name)
    parser = argparse.ArgumentParser(
        prog=stage.script, description=f"S5CL stage {name}: {stage.doc}"
    )
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
    processes, rank = _processes()
    try:
        if processes > 1 and not stage.multi_process:  # the others read or write whole files
            multi = ", ".join(s.name for s in stages.STAGES if s.multi_process)
            raise UserError(
                f"{stage.script} runs as one process; start it with python, not torchrun "
                f"(torchrun is for {multi})"
            )
        params = load_params(args.params, args.overrides)
        summary = stages.function(name)(params)
    except UserError as error:
        who = f" (rank {rank} of {processes})" if processes > 1 else ""
        print(f"{name}{who}: error: {error}", file=sys.stderr)
        sys.exit(2)
    if summary is not None:  # None: a torchrun process other than rank 0
        print(f"{name}: {summary} [{time.perf_counter() - start:.1f}s]")
