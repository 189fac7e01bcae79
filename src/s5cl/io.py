"""Atomic writes and checked reads.

A killed or failing stage leaves the old file or the new one, never half of either, and its
outputs get the mode the user's umask gives any new file (0644 under the usual 022), so a
colleague on a shared server can read them. A write that the file system refuses (full disk,
read-only, no permission) and a stage input that is missing or unreadable both end in one line
naming the path and what to do (UserError), never a traceback.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from s5cl.errors import UserError

T = TypeVar("T")

# What the file system says when it refuses a write, and what the user can do about it.
WRITE_FIXES = {
    errno.ENOSPC: "free some space and rerun",
    errno.EDQUOT: "free some space (disk quota) and rerun",
    errno.EFBIG: "the file system or a ulimit caps file sizes; raise it and rerun",
    errno.EROFS: "the file system is read-only; run the project from a writable folder",
    errno.EACCES: "no permission to write there; fix the folder's permissions",
    errno.EPERM: "no permission to write there; fix the folder's permissions",
}


def umask() -> int:
    """The process's umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cannot_write(path: str | Path, error: OSError) -> UserError:
    """One line for a write the file system refused, naming the path and the fix."""
    fix = WRITE_FIXES.get(error.errno, "check the folder and rerun")
    return UserError(f"{path}: cannot write ({error.strerror or error}); {fix}")


def refused_write(error: BaseException | None) -> OSError | None:
    """The OSError of a refused write in `error` or what it was raised during (torch.save, on a
    full disk, ends in a RuntimeError raised while cleaning up after the OSError), else None."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in WRITE_FIXES:
            return error
        error = error.__cause__ or error.__context__
    return None


def remove_leftovers(path: Path) -> None:
    """Delete the temporary siblings of `path` a killed writer left (SIGKILL skips `finally`),
    so they never pile up beside the outputs."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextmanager
def named_if_refused(path: Path) -> Iterator[None]:
    """A write to `path` inside the block that the file system refuses is one line naming
    `path`; any other error goes on as it is."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        refused = refused_write(error)
        if refused is None:
            raise
        raise cannot_write(path, refused) from None


def _new_sibling(path: Path, folder: bool) -> Path:
    """A new temporary file (or `folder`) beside `path`, once what a killed writer of `path`
    left there is gone; any failure names `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path)
        where = {"prefix": f".{path.name}.", "suffix": ".tmp", "dir": path.parent}
        if folder:
            return Path(tempfile.mkdtemp(**where))
        fd, name = tempfile.mkstemp(**where)
        os.close(fd)
        return Path(name)
    except OSError as error:
        raise cannot_write(path, error) from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.
    The file gets the umask's mode (mkstemp's 0600 would survive the rename)."""
    path = Path(path)
    tmp_path = _new_sibling(path, folder=False)
    try:
        with named_if_refused(path):
            yield tmp_path
            os.chmod(tmp_path, 0o666 & ~umask())
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; it replaces `path` whole if the block succeeds. The
    folder gets the umask's mode (mkdtemp's 0700 would survive the rename)."""
    path = Path(path)
    tmp = _new_sibling(path, folder=True)
    try:
        with named_if_refused(path):
            yield tmp
            os.chmod(tmp, 0o777 & ~umask())
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


# A text cell a spreadsheet would run as a formula starts with one of these (OWASP's CSV
# injection rule); a quote before it makes it text, and a cell starting with a quote gets one
# more, so reading strips exactly one and every cell comes back as it was.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def _is_text(column: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)


def write_csv(frame: pd.DataFrame, target: Any) -> None:
    """`frame` as CSV into `target` (a path or an open file), its text cells neutralised for
    spreadsheets (a class named `=1+2` is written `'=1+2`); numbers are left as they are."""
    safe = frame.copy()
    for column in safe.columns:
        if _is_text(safe[column]):
            text = safe[column].astype(str).where(safe[column].notna())
            risky = text.str.startswith(FORMULA_STARTS, na=False)
            safe[column] = text.where(~risky, "'" + text)
    safe.to_csv(target, index=False)


def read_csv(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    """A CSV written by write_csv, every text cell as it was before writing."""
    frame = pd.read_csv(path, **kwargs)
    for column in frame.columns:
        if _is_text(frame[column]):
            text = frame[column]
            quoted = text.str.startswith("'", na=False) & text.str[1:2].isin(FORMULA_STARTS)
            frame[column] = text.where(~quoted, text.str[1:])
    return frame


def rerun_hint(path: str | Path) -> str:
    """'rerun the prepare stage (dvc repro)' for a file a stage writes; DVC and Snakemake both
    rerun a stage whose output is missing or changed."""
    from s5cl import stages  # here: stages imports this module's users

    writer = stages.writer_of(path)
    if writer is None:
        return "check the file"
    return f"rerun the {writer.name} stage (dvc repro, or python {writer.script})"


def first_line(error: BaseException, limit: int = 160) -> str:
    """A library's error for a one-line message: its first line, cut, or its type's name."""
    text = str(error)
    return text.splitlines()[0][:limit] if text else type(error).__name__


# Errors a reader raises on a missing, truncated or foreign file (pyarrow's are ValueErrors).
UNREADABLE = (OSError, ValueError, EOFError, RuntimeError, KeyError, pickle.UnpicklingError)


def read_input(path: str | Path, read: Callable[[Path], T], what: str = "file") -> T:
    """`read(path)`, or one line naming the path, why it cannot be read, and the stage that
    writes it (a deleted, truncated or foreign input of a stage)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} missing; {rerun_hint(path)}")
    try:
        return read(path)
    except UNREADABLE as error:
        raise UserError(
            f"{path}: unreadable {what} ({first_line(error, 200)}); {rerun_hint(path)}"
        ) from None


def read_json(path: str | Path) -> Any:
    return read_input(path, lambda p: json.loads(p.read_text()), "JSON file")


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    return read_input(path, lambda p: pd.read_parquet(p, columns=columns), "table")


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    import torch  # here, not at the top: the data stages never load torch

    # Through a Python file: a failed write is then an OSError with its errno (torch's own
    # writer turns a full disk into "RuntimeError: unexpected pos").
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(checkpoint, handle)


MODEL_KEYS = ("model", "params", "class_names", "mean", "std", "image_size")


def describe_checkpoint(content: Any) -> str:
    """What a loaded .pt file holds, for a message that says what it is."""
    import torch

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
    import re

    found = re.search(r"(?:GLOBAL|global) ([\w.]+)", str(error))
    return f"a call of {found.group(1)}" if found else None


def load_checkpoint(path: str | Path, hint: str | None = None) -> dict[str, Any]:
    """A model file written by warmup, s5cl or retrain. Anything else (missing, truncated,
    random bytes, a plain state dict) ends in one line saying what it is and what to do:
    `hint`, else rerun the stage that writes it."""
    import torch

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
