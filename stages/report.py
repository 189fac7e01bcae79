"""Stage `report` (see s5cl.pipeline.report).

Usage: python stages/report.py [--params params.yaml] [--set section.key=value ...]
"""

import sys
from pathlib import Path

# This folder holds s5cl.py, which must not shadow the s5cl package: drop it from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from s5cl.cli import run_stage  # noqa: E402
from s5cl.pipeline import report  # noqa: E402

if __name__ == "__main__":
    run_stage("report", report)
