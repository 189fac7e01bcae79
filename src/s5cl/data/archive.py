"""Unpacking a downloaded zip safely: every member must land inside the target folder."""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from s5cl.errors import UserError
from s5cl.io import atomic_dir

DONE = ".extracted"  # written last inside the target: names the archive md5 it came from


def _check_member(name: str, archive: Path) -> None:
    """Refuse absolute paths, drive letters and `..`: a member must not escape the target."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UserError(
            f"{archive}: member {name!r} would be written outside the target folder; "
            "refusing to extract. Delete the archive and download it again from its host"
        )


def extract_zip(archive: Path, target: Path, md5: str) -> bool:
    """Extract `archive` into `target` (atomically: complete or absent). Returns False when
    `target` already holds this archive's extraction (same md5), True when it extracted."""
    done = target / DONE
    if done.is_file() and done.read_text().strip() == md5:
        return False
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise UserError(f"{archive}: not a zip file; delete it and rerun the download") from None
    with zf:
        members = zf.infolist()
        for info in members:
            _check_member(info.filename, archive)
        with atomic_dir(target) as tmp:
            bar = tqdm(members, desc=f"unzip {archive.name}", unit="file", dynamic_ncols=True)
            for info in bar:
                zf.extract(info, tmp)
            (tmp / DONE).write_text(md5 + "\n")
    return True
