"""Stage `report`: one self-contained page: params, scores, figures, training curves.

Usage: python stages/report.py [--params params.yaml] [--set section.key=value ...]

GENERATED from src/s5cl/pipeline/stages.py by `python -m s5cl.pipeline.generate write`.
The work: s5cl.pipeline.report:report.
"""

import sys
from pathlib import Path

# This folder holds s5cl.py, which must not shadow the s5cl package: drop it from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from s5cl.pipeline.runner import run_stage  # noqa: E402

if __name__ == "__main__":
    run_stage("report")
