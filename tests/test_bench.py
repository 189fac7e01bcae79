"""Every benchmark's quick mode runs, so none can break unnoticed (timings are theirs to print,
not ours to assert)."""

import json
import os
import re
import subprocess
import sys

import pytest

from .conftest import PBC, ROOT, needs_shared


def _quick(script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """bench/<script>.py --quick, which must exit 0."""
    command = [sys.executable, str(ROOT / f"bench/{script}.py"), "--quick"]
    return subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})}
    )


@needs_shared()
def test_prepare_scaling_quick_mode_prints_its_table_of_the_data_s5cl_shared_data_names(tmp_path):
    """bench/shared_data.py: S5CL_SHARED_DATA replaces ../shared/data (a GPU machine reads a
    carried copy): here a pbc-240 of 3 cells a class, which the table must count."""
    for folder in sorted(p for p in PBC.iterdir() if p.is_dir()):
        (tmp_path / "pbc-240" / folder.name).mkdir(parents=True)
        for cell in sorted(folder.glob("*.jpg"))[:3]:
            (tmp_path / "pbc-240" / folder.name / cell.name).symlink_to(cell)
    out = _quick("prepare_scaling", {"S5CL_SHARED_DATA": str(tmp_path)})
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:]}
    assert rows["pbc-240"][2] == "24"
    assert rows["synthetic-100"][2] == "100"
    assert rows["ratio"][1] == "16"


@pytest.mark.slow(95)
@needs_shared()
def test_the_gpu_check_smoke_runs_every_part_on_the_cpu(tmp_path):
    """bench/gpu_check.py --smoke: the gpu tests on the CPU, the whole pipeline, speed.py's and
    frozen.py's quick modes, the NCT-like tiles packed and trained on; all ok, figures there."""
    summary_path = tmp_path / "gpu_check.json"
    command = [
        sys.executable,
        str(ROOT / "bench/gpu_check.py"),
        "--smoke",
        "--json",
        str(summary_path),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"gpu check: 5 of 5 parts ok in \d+ s \(.*\)", lines[-1]), lines[-1]
    summary = json.loads(summary_path.read_text())
    env = summary["environment"]
    assert env["device"] == "cpu" and env["torch_pinned"] == "2.14.1" and env["commit"]

    tests = summary["tests"]
    assert (tests["passed"], tests["failed"], tests["skipped"]) == (4, 0, 0)
    (resume,) = [case for case in tests["cases"] if "resume_bitwise" in case]
    assert resume["resume_bitwise"] == "True"

    from s5cl.pipeline import stages

    pipeline = summary["pipeline"]
    assert list(pipeline["stage_seconds"]) == [s.name for s in stages.STAGES]
    assert 0 <= pipeline["final_accuracy"] <= 1

    # speed.py's and frozen.py's own last lines, as their quick modes print them
    assert re.search(r"^  data-path speedup [0-9.]+x, train-step speedup [0-9.]+x$",
                     done.stdout, re.M)  # fmt: skip
    assert "GPU estimate: 3906 steps" in done.stdout
    assert set(summary["speed"]["ratios"]) == {"data_path", "train_step", "bf16_vs_fp32"}
    assert re.search(r"^  per-step speedup [0-9.]+x, phase speedup [0-9.]+x \(features stage "
                     r"included\)$", done.stdout, re.M)  # fmt: skip
    assert "64 images x (2 weak + 2 strong + plain) = 320 passes" in done.stdout
    assert summary["frozen"]["features_passes_per_s"] > 0

    nct = summary["nct"]
    assert nct["tiles"] == 64 and nct["runs"]["eager"]["step_s"] > 0
    assert set(nct["projected"]) == {"training_min", "pseudo_labels_min", "evaluation_min",
                                     "total_min"}  # fmt: skip
