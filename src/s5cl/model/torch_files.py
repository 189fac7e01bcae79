"""Model files and resume checkpoints on disk: written atomically, read without running code.

torch.load(weights_only=True) builds tensors and plain values only; a file holding a pickled
object or call is refused and named (docs/security.md), so a model file from elsewhere cannot
run code here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from s5cl.errors import UserError
from s5cl.io import atomic_path, first_line, rerun_hint


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    # Through a Python file: a failed write is then an OSError with its errno (torch's own
    # writer turns a full disk into "RuntimeError: unexpected pos").
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(checkpoint, handle)


MODEL_KEYS = ("model", "params", "class_names", "mean", "std", "image_size")


def describe_checkpoint(content: Any) -> str:
    """What a loaded .pt file holds, for a message that says what it is."""
    if isinstance(content, torch.nn.Module):
        return f"a pickled {type(content).__name__} module"
    if not isinstance(content, dict):
        return f"a {type(content).__name__}, not a dict"
    if content and all(isinstance(v, torch.Tensor) for v in content.values()):
        return f"a plain state dict ({len(content)} tensors)"
    return f"a dict with keys {', '.join(sorted(map(str, content))[:6])}"


def refused_global(error: Exception) -> str | None:
    """What torch.load(weights_only=True) refused to build, from its message: `GLOBAL
    posix.system` -> 'a call of posix.system'; None for bytes that are no pickle at all."""
    found = re.search(r"(?:GLOBAL|global) ([\w.]+)", str(error))
    return f"a call of {found.group(1)}" if found else None


def load_checkpoint(path: str | Path, hint: str | None = None) -> dict[str, Any]:
    """A model file written by warmup, s5cl or retrain. Anything else (missing, truncated,
    random bytes, a plain state dict) ends in one line saying what it is and what to do:
    `hint`, else rerun the stage that writes it."""
    path = Path(path)
    fix = hint or rerun_hint(path)
    if not path.exists():
        raise UserError(f"{path}: model file missing; {fix}")
    try:  # weights_only: tensors and plain values; a pickled object or call is refused
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # other bytes raise almost anything
        if (refused := refused_global(error)) is not None:
            raise UserError(
                f"{path}: holds {refused}, which a model file of this project never does; it "
                f"was not run (docs/security.md); {fix}"
            ) from None
        raise UserError(f"{path}: not a readable model file ({first_line(error)}); {fix}") from None
    if not isinstance(content, dict) or not all(key in content for key in MODEL_KEYS):
        raise UserError(
            f"{path}: {describe_checkpoint(content)}, not a model file of this project "
            f"(written by warmup, s5cl or retrain, e.g. models/final.pt); {fix}"
        )
    return content
