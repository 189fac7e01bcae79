"""Stage `coldstart`: a self-supervised embedding of the training pool (split.select not random).

Usage: python stages/coldstart.py [--params params.yaml] [--set section.key=value ...]

GENERATED from src/s5cl/pipeline/stages.py by `python -m s5cl.pipeline.generate write`.
The work: s5cl.pipeline.coldstart:coldstart.
"""

import sys
from pathlib import Path

# This folder holds s5cl.py, which must not shadow the s5cl package: drop it from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from s5cl.pipeline.runner import run_stage  # noqa: E402

if __name__ == "__main__":
    run_stage("coldstart")
