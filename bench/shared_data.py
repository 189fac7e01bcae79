"""Where the benchmarks read the real images: ../shared/data beside the checkout, or the folder
S5CL_SHARED_DATA names (a GPU machine gets a carried copy, see bench/gpu_check.py --carry)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("S5CL_SHARED_DATA") or ROOT.parent / "shared" / "data").resolve()
PBC = SHARED / "pbc-240"
CRC_TILES = SHARED / "crc-tiles"
