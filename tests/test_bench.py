"""Every benchmark's quick mode runs, so none can break unnoticed (timings are theirs to print,
not ours to assert)."""

import re
import subprocess
import sys

from .conftest import PBC, ROOT, needs_shared


def _quick(script: str) -> subprocess.CompletedProcess:
    """bench/<script>.py --quick, which must exit 0."""
    command = [sys.executable, str(ROOT / f"bench/{script}.py"), "--quick"]
    return subprocess.run(command, capture_output=True, text=True, check=True)


@needs_shared()
def test_prepare_scaling_quick_mode_prints_its_table():
    out = _quick("prepare_scaling")
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:]}
    assert rows["pbc-240"][2] == str(len(list(PBC.glob("*/*.jpg"))))
    assert rows["synthetic-100"][2] == "100"
    assert rows["ratio"][1] == "16"


@needs_shared()
def test_speed_quick_mode_runs_both_designs_and_prints_the_ratios():
    out = _quick("speed")
    last = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"data-path speedup [0-9.]+x, train-step speedup [0-9.]+x", last), last
    assert "GPU estimate: 3906 steps" in out.stdout


@needs_shared()
def test_frozen_quick_mode_runs_both_designs_and_prints_the_ratios():
    out = _quick("frozen")
    last = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"per-step speedup [0-9.]+x, phase speedup [0-9.]+x \(features stage included\)", last
    ), last
    assert "64 images x (2 weak + 2 strong + plain) = 320 passes" in out.stdout
