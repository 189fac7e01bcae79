"""The command line every stage script shares: `--params params.yaml --set section.key=value`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from s5cl import layout
from s5cl.config.params import load_params
from s5cl.errors import UserError
from s5cl.io import cannot_write, refused_write
from s5cl.pipeline import stages
from s5cl.pipeline.leftovers import remove_what_kills_left


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


DRIVERS = ("dvc", "snakemake")


def _process(pid: int) -> tuple[list[str], int, int] | None:
    """A process's argv, parent and start time (clock ticks since boot), from /proc; None if
    it is gone (or this is not Linux)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return argv, int(fields[1]), int(fields[19])


def driver() -> dict | None:
    """The dvc or snakemake process this stage runs under: its nearest ancestor by that name
    (`python -m snakemake` too). None when run as a plain script."""
    pid = os.getppid()
    while pid > 1 and (found := _process(pid)) is not None:
        argv, parent, start = found
        for arg in argv[:3]:
            if Path(arg).name in DRIVERS:
                return {"driver": Path(arg).name, "pid": pid, "start": start}
        pid = parent
    return None


def claim_folder() -> None:
    """One kind of driver at a time in a project folder: `dvc repro` and `snakemake` running at
    once would each write outputs the other's stages read, from two configs. (Two of one kind
    are stopped by its own lock: DVC's repository lock, Snakemake's .snakemake/locks.) Each
    stage records its driver (layout.DRIVER); a stage of the other kind, while the recorded
    process still runs on this machine, stops with one line. A record of a process that has
    ended is stale and replaced. Snakemake's cluster jobs each run under a snakemake of their
    own: the same kind, so they pass."""
    me = driver()
    if me is None:
        return
    try:
        other = json.loads(layout.DRIVER.read_text())
    except (OSError, ValueError):
        other = None
    if isinstance(other, dict) and other.get("driver") != me["driver"]:
        alive = _process(int(other.get("pid", 0)))
        if alive is not None and alive[2] == other.get("start"):
            raise UserError(
                f"{other['driver']} (pid {other['pid']}) is running the pipeline in this folder; "
                f"two drivers at once would mix their outputs: wait for it to end, or stop it "
                f"({layout.DRIVER} records it)"
            )
    if other == me:
        return  # another job of the same driver recorded it already
    # Jobs of one Snakemake run start side by side: each writes its own file, then renames it
    # (atomic_path would clear the other's temporary file as a killed writer's leftover).
    mine = layout.DRIVER.with_name(f"{layout.DRIVER.name}.{os.getpid()}.tmp")
    try:
        mine.write_text(json.dumps(me))
        os.replace(mine, layout.DRIVER)
    except OSError as error:
        raise cannot_write(layout.DRIVER, error) from None
    finally:
        mine.unlink(missing_ok=True)


def _processes() -> tuple[int, str]:
    """How many processes torchrun started (WORLD_SIZE; 1 without it), and this one's rank.
    Read from the environment: the data stages never import torch.distributed."""
    return int(os.environ.get("WORLD_SIZE", "1")), os.environ.get("RANK", "0")


def run_stage(name: str) -> None:
    """Parse the shared command line, validate params, run stage `name`'s function (from the
    stage table), print its one-line summary.

    A UserError ends in one line on stderr and exit code 2, not a traceback. Started by
    torchrun, a training stage runs as one of its processes (s5cl.training.distributed); rank 0
    prints.
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
        params = stages.checked(load_params(args.params, args.overrides))
        claim_folder()
        remove_what_kills_left(name, params.data.name)
        summary = stages.function(name)(params)
    except (UserError, OSError, RuntimeError) as error:
        if not isinstance(error, UserError):  # a write refused outside atomic_path
            refused = refused_write(error)
            if refused is None:
                raise
            error = cannot_write(refused.filename or "an output", refused)
        who = f" (rank {rank} of {processes})" if processes > 1 else ""
        print(f"{name}{who}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which says its step itself)
        print(
            f"{name}: error: stopped by Ctrl-C; its outputs are written whole or not at all, so "
            "nothing half-made is left: rerun it",
            file=sys.stderr,
        )
        sys.exit(2)
    if summary is not None:  # None: a torchrun process other than rank 0
        print(f"{name}: {summary} [{time.perf_counter() - start:.1f}s]")
