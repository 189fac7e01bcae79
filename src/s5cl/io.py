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
import sys
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


# Which stage writes a file, so that an error can say what remakes it. The library knows no
# stages: the pipeline's runner installs s5cl.pipeline.stages.writer_of here (set_writer_lookup);
# used as a library, a missing file's message says to make it again.
_writer_of: Callable[[str | Path], Any] | None = None


def set_writer_lookup(lookup: Callable[[str | Path], Any] | None) -> None:
    """`lookup(path)`: the pipeline stage writing `path` (name and script), or None."""
    global _writer_of
    _writer_of = lookup


def rerun_hint(path: str | Path) -> str:
    """'rerun the prepare stage (dvc repro)' for a file a stage writes; DVC and Snakemake both
    rerun a stage whose output is missing or changed."""
    writer = _writer_of(path) if _writer_of is not None else None
    if writer is None:
        return "check the file" if _writer_of is not None else "make it again"
    return f"rerun the {writer.name} stage (dvc repro, or python {writer.script})"


def note(message: str) -> None:
    """A line on stderr that tells what was done for the user (a stale file removed)."""
    print(f"note: {message}", file=sys.stderr)


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
