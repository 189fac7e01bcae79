"""SIGKILL `dvc repro` at chosen moments, rerun plain `dvc repro` until it is done, compare.

Used by tests/conftest.py (the suite's shared run: one kill in each training stage and one in
a data stage; test_pipeline_e2e.py checks them), and as a command for many kills at random
moments:

    python -m tests.kills PROJECT --kills 12 --seed 0

PROJECT is a project (git + DVC) whose `dvc repro` has run to the end once: its metrics are
the reference. Each cycle picks a random stage, forces it and what follows to run again
(`dvc repro -f --downstream STAGE`), kills that at a random moment of the stage, then reruns
plain `dvc repro` until it succeeds; every other cycle first makes DVC forget the stage's
outputs (`forget`), so that the rerun must run (and resume) the killed stage rather than restore
it from DVC's cache.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TRAINING = ("warmup", "s5cl", "retrain")
VENV_BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}


def results(project: Path) -> dict[str, bytes]:
    """What a run is judged by: every metrics and plots file, the pseudo-labels, the report
    (not the hidden temporary files a killed writer leaves: `leftovers` lists those)."""
    files = [p for folder in ("metrics", "plots", "report") for p in (project / folder).rglob("*")]
    files.append(project / "data/pseudo/pseudo.parquet")
    return {
        str(p.relative_to(project)): p.read_bytes()
        for p in sorted(files)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(project).parts)
    }


def leftovers(project: Path) -> list[str]:
    """Resume checkpoints and writers' temporary files on disk now."""
    found = [*(project / "checkpoints").glob("*.pt")]
    for folder in ("data", "models", "metrics", "plots", "report"):
        found += (project / folder).rglob(".*.tmp")
    return sorted(str(p.relative_to(project)) for p in found)


@dataclass
class Kill:
    stage: str
    at: float  # seconds after the stage started (training stages: after its first checkpoint)
    landed: str = ""  # what was running when the kill landed
    rerun: str = ""  # what the reruns printed about it
    attempts: int = 0  # plain `dvc repro` runs until one succeeded
    identical: bool | None = None
    differs: tuple[str, ...] = ()  # the files that are not


def _running(log: Path) -> str | None:
    stages = re.findall(r"Running stage '(\w+)'", log.read_text(errors="replace"))
    return stages[-1] if stages else None


def kill_during(project: Path, kill: Kill, command: list[str], timeout: float = 600) -> bool:
    """Start `command`; SIGKILL its whole process group `kill.at` s into `kill.stage` (for a
    training stage, counted from its first resume checkpoint). False if it ended first."""
    log = project / ".kill.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=project, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    started = None
    while proc.poll() is None and time.monotonic() < deadline:
        checkpointed = kill.stage not in TRAINING or any(
            (project / "checkpoints").glob(f"{kill.stage}-*")
        )
        if started is None and checkpointed and _running(log) == kill.stage:
            started = time.monotonic()
        if started is not None and time.monotonic() - started >= kill.at:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kill.landed = _running(log) or "?"
            return True
        time.sleep(0.01)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"{command} ran past {timeout} s")
    proc.wait()
    return False


def summarise_rerun(output: str) -> str:
    """'warmup resumed at step 2; s5cl restored from DVC's cache; ...' from dvc's output."""
    resumed = re.findall(r"(\w+): resuming from \S+ at step (\d+)", output)
    parts = [f"{stage} resumed at step {step}" for stage, step in resumed]
    cached = re.findall(r"Stage '(\w+)' is cached - skipping run", output)
    parts += [f"{stage} restored from DVC's cache" for stage in cached]
    parts += [f"removed a checkpoint ({m})" for m in re.findall(r"note: removed (\S+)", output)]
    ran = re.findall(r"Running stage '(\w+)'", output)
    if ran:
        parts.append("ran " + ", ".join(ran))
    return "; ".join(parts) or "nothing to do"


def rerun_until_done(project: Path, tries: int = 3) -> tuple[str, int]:
    """Plain `dvc repro` until it succeeds (a rerun after a kill must; more than one try is a
    failure of this project, reported, not hidden)."""
    said = []
    for attempt in range(1, tries + 1):
        done = subprocess.run(["dvc", "repro"], cwd=project, env=_env(),
                              capture_output=True, text=True)  # fmt: skip
        said.append(summarise_rerun(done.stdout + done.stderr))
        if done.returncode == 0:
            return " | ".join(said), attempt
        said[-1] += f" [failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}]"
    return " | ".join(said), tries + 1


def forget(project: Path, stage: str) -> None:
    """Make DVC unable to restore `stage` without running it: empty its run cache and drop the
    stage's outputs from its cache (as after `dvc gc`, or in a clone that never pulled them)."""
    import yaml

    shutil.rmtree(project / ".dvc/cache/runs", ignore_errors=True)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]
    for out in lock.get("outs", []):
        md5 = out["md5"]
        (project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink(missing_ok=True)


def cycle(project: Path, kill: Kill, reference: dict[str, bytes], run_cache: bool) -> Kill:
    if not run_cache:
        forget(project, kill.stage)
    if not kill_during(project, kill, ["dvc", "repro", "-f", "--downstream", kill.stage]):
        kill.landed = "(ended before the kill)"
    kill.rerun, kill.attempts = rerun_until_done(project)
    now = results(project)
    kill.differs = tuple(
        p for p in sorted(set(now) | set(reference)) if now.get(p) != reference.get(p)
    )
    kill.identical = not kill.differs
    return kill


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default="prepare,split,warmup,s5cl,pseudolabel,retrain,"
                        "evaluate,report")  # fmt: skip
    args = parser.parse_args(argv)
    reference = results(args.project)
    rng = random.Random(args.seed)
    stages = args.stages.split(",")
    print("| # | stage killed | moment | DVC cache of it | rerun output | reruns | identical |")
    print("|---|---|---|---|---|---|---|")
    for i in range(args.kills):
        stage = rng.choice(stages)
        kill = Kill(stage, round(rng.uniform(0, 2.5 if stage in TRAINING else 1.5), 2))
        cycle(args.project, kill, reference, run_cache=i % 2 == 0)
        moment = f"{kill.at} s" + (" after 1st checkpoint" if stage in TRAINING else " in")
        print(f"| {i + 1} | {stage} (landed in {kill.landed}) | {moment} | "
              f"{'kept' if i % 2 == 0 else 'forgotten'} | {kill.rerun} | {kill.attempts} | "
              f"{'yes' if kill.identical else 'NO: ' + ', '.join(kill.differs)} |",
              flush=True)  # fmt: skip
        left = leftovers(args.project)
        if left:
            print(f"|   | left on disk: {', '.join(left)} | | | | | |", flush=True)


if __name__ == "__main__":
    main()
