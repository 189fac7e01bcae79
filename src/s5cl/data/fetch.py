"""Downloads a user can trust with 12 GB, and md5s of what is on disk.

A file is streamed to `<name>.part` with a byte progress bar; after an interruption the next try
asks for the rest with an HTTP Range request instead of starting over; failed tries are retried
with exponential backoff; the md5 is checked before the file is renamed into place. A verified
file leaves a `<name>.md5` note (md5, size, mtime), so a later run trusts it without re-reading
12 GB and downloads nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from s5cl.errors import UserError

CHUNK = 1 << 20
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5_file(path: str | Path, chunk: int = CHUNK) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def md5_files(paths: Iterable[Path], desc: str = "md5", cache: Path | None = None) -> list[str]:
    """md5 of many files on a few threads (hashlib releases the GIL), with a progress bar.

    `cache` (a JSON file) remembers each file's md5 with its size and modification time, so
    listing an unchanged folder again reads no image (download runs on every `dvc repro`); a
    file whose size or time differs is read again. prepare checks every md5 against the bytes
    it decodes, so even a file rewritten within the same nanosecond is caught there."""
    paths = list(paths)
    known: dict[str, list] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}  # a damaged cache costs one full read, nothing else
    stamps = [_size_and_time(path) for path in paths]
    todo = [i for i, (path, stamp) in enumerate(zip(paths, stamps, strict=True))
            if known.get(str(path), [None])[:-1] != stamp]  # fmt: skip
    digests = [known[str(path)][-1] if str(path) in known else "" for path in paths]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        fresh = pool.map(md5_file, [paths[i] for i in todo], chunksize=64)
        for i, digest in zip(todo, tqdm(fresh, total=len(todo), desc=desc, unit="file",
                                        dynamic_ncols=True), strict=True):  # fmt: skip
            digests[i] = digest
    if cache is not None and todo:
        cache.parent.mkdir(parents=True, exist_ok=True)
        entries = {str(p): [*s, d] for p, s, d in zip(paths, stamps, digests, strict=True)}
        cache.write_text(json.dumps(known | entries))
    return digests


def _size_and_time(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


@dataclass(frozen=True)
class FetchReport:
    path: Path
    downloaded: int  # bytes received in this call
    resumed_from: int  # bytes of an earlier partial download that were kept (0: fresh start)
    cached: bool  # the file was already here and verified; nothing was requested


class _Retry(Exception):
    """A failure worth another try: a dropped connection, a timeout, a 5xx answer."""

    def __init__(self, reason: str, received: int = 0):
        super().__init__(reason)
        self.received = received  # bytes that did arrive (and were kept) before the failure


def _md5_sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".md5")


def _stamp(dest: Path, md5: str) -> str:
    stat = dest.stat()
    return f"{md5} {stat.st_size} {stat.st_mtime_ns}\n"


def is_verified(dest: Path, md5: str) -> bool:
    """True when `dest` was md5-verified before and has not changed since (size and mtime)."""
    note = _md5_sidecar(dest)
    return dest.is_file() and note.is_file() and note.read_text() == _stamp(dest, md5)


def mark_verified(dest: Path, md5: str) -> None:
    _md5_sidecar(dest).write_text(_stamp(dest, md5))


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> int:
    """One request: append the missing bytes to `part`. Returns bytes received; raises _Retry."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "s5cl-pipeline"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as error:
        if error.code == 416 and have:  # nothing left to send: the part is complete (md5 decides)
            return 0
        if error.code in RETRY_STATUS:
            raise _Retry(f"HTTP {error.code} {error.reason}") from None
        raise UserError(
            f"{url}: HTTP {error.code} {error.reason}; check the address (data.mirror) "
            "or whether the host still serves this file"
        ) from None
    except (URLError, HTTPException, OSError) as error:
        raise _Retry(str(getattr(error, "reason", error))) from None
    received = 0
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, "ab" if resumed else "wb") as out,
            tqdm(
                total=total,
                initial=have,
                desc=part.name.removesuffix(".part"),
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                dynamic_ncols=True,
                disable=not progress,
            ) as bar,
        ):
            while True:
                try:
                    block = response.read(CHUNK)
                except (HTTPException, OSError) as error:
                    raise _Retry(
                        f"connection lost after {have + received} bytes ({error})", received
                    ) from None
                if not block:
                    break
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and have + received < total:
        raise _Retry(f"connection closed at {have + received} of {total} bytes", received)
    return received


def fetch(
    url: str,
    dest: str | Path,
    md5: str,
    *,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> FetchReport:
    """Download `url` to `dest` unless a verified copy is already there (see module docstring).

    A wrong md5 deletes the partial file (resuming it could never fix it) and raises UserError;
    `dest` is only ever a complete, verified file.
    """
    dest = Path(dest)
    if is_verified(dest, md5):
        return FetchReport(dest, 0, 0, cached=True)
    if dest.exists():  # put there by hand, or the note is stale: check it once
        got = md5_file(dest)
        if got != md5:
            raise UserError(
                f"{dest}: md5 is {got}, expected {md5}; delete it and rerun the download stage"
            )
        mark_verified(dest, md5)
        return FetchReport(dest, 0, 0, cached=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed_from = part.stat().st_size if part.exists() else 0
    received = 0
    for attempt in range(retries + 1):
        try:
            received += _transfer(url, part, timeout, progress)
            break
        except _Retry as error:
            received += error.received
            if attempt == retries:
                kept = part.stat().st_size if part.exists() else 0
                raise UserError(
                    f"{url}: download failed after {retries + 1} tries ({error}); {part} keeps "
                    f"{kept} bytes: rerun to resume, or set data.mirror to another host"
                ) from None
            wait = backoff * 2**attempt
            print(f"download: {error}; retry {attempt + 1}/{retries} in {wait:g}s", file=sys.stderr)
            time.sleep(wait)
    got = md5_file(part)
    if got != md5:
        part.unlink()
        raise UserError(
            f"{dest.name}: downloaded file has md5 {got}, expected {md5}; it was deleted. "
            f"Check that {url} serves this dataset's file (data.mirror), then rerun"
        )
    os.replace(part, dest)
    mark_verified(dest, md5)
    return FetchReport(dest, received, resumed_from, cached=False)
