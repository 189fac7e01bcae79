"""The dataset registry: what `download` does for each `data.name`.

Every dataset ends as `manifest.parquet` in `data/raw/<name>/`, one row per image:

    source      image file, or .npz file (absolute, or relative to the raw folder)
    member      array name inside the .npz ("" for image files)
    row         row of that array (-1 for image files)
    class_name  the label ("" for an image without one)
    subset      train | val | test: the dataset's own split ("train" when it has none);
                unlabeled: an image without a label (a CSV row with an empty label, the
                `data.unlabeled_dir` folder beside the class folders, or `data.unlabeled_root`)
    md5         md5 of the image's bytes (file bytes, or the array row's bytes)

plus any other column of a CSV dataset (a patient, slide or scan: `split.group` names one).

Downloaded archives and their unpacked trees live in `data.downloads` (outside DVC's outputs, so
a forced rerun never downloads 12 GB again); the manifest's md5s let `prepare` prove that
nothing there changed since it was listed. Published class counts are checked after unpacking.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from s5cl.config.params import DataParams
from s5cl.data.archive import DONE, extract_zip
from s5cl.data.fetch import fetch, md5_bytes, md5_files
from s5cl.data.npz import iter_rows
from s5cl.errors import UserError
from s5cl.io import atomic_path, write_parquet

MANIFEST = "manifest.parquet"
MD5_CACHE = "md5-cache.json"  # in data.downloads/<name>/: md5s known from the last listing
SUBSETS = ("train", "val", "test")
UNLABELED = "unlabeled"  # the subset of images without a label
COLUMNS = ["source", "member", "row", "class_name", "subset", "md5"]
CSV_COLUMNS = ("path", "label", "subset")  # a CSV dataset's own columns; others are kept
# the packed index's own columns (prepare); any other is a column of the dataset's CSV
INDEX_COLUMNS = ("path", "label", "class_name", "subset", "md5", "width", "height")


@dataclass(frozen=True)
class RemoteFile:
    name: str  # the file's name on its host and on disk
    url: str
    md5: str
    size: int | None = None  # bytes, where published

    def url_from(self, mirror: str | None) -> str:
        """`data.mirror` serves the same file names from another base URL."""
        return f"{mirror.rstrip('/')}/{self.name}" if mirror else self.url


@dataclass(frozen=True)
class ArchivePart:
    """One zip of a class-folder dataset (`<top>/<CLASS>/<image>`) and the subset it forms."""

    file: RemoteFile
    subset: str
    counts: Mapping[str, int] | None = None  # published images per class
    total: int | None = None  # published image count, when per-class counts are not


@dataclass(frozen=True)
class ArraySet:
    """A MedMNIST-style .npz: `<subset>_images` (N x H x W [x 3] uint8), `<subset>_labels`."""

    file: RemoteFile
    class_names: tuple[str, ...]  # label i is class_names[i]
    totals: Mapping[str, int]  # rows per subset


_KATHER = "https://zenodo.org/records/1214456/files/"
_MEDMNIST = "https://zenodo.org/records/10519652/files/"

NCT_CRC_HE_100K_COUNTS = {
    "ADI": 10407, "BACK": 10566, "DEB": 11512, "LYM": 11557, "MUC": 8896,
    "MUS": 13536, "NORM": 8763, "STR": 10446, "TUM": 14317,
}  # fmt: skip
CRC_VAL_HE_7K_COUNTS = {
    "ADI": 1338, "BACK": 847, "DEB": 339, "LYM": 634, "MUC": 1035,
    "MUS": 592, "NORM": 741, "STR": 421, "TUM": 1233,
}  # fmt: skip
CRC_VAL_HE_7K = ArchivePart(
    RemoteFile(
        "CRC-VAL-HE-7K.zip", _KATHER + "CRC-VAL-HE-7K.zip", "2fd1651b4f94ebd818ebf90ad2b6ce06"
    ),
    "test",
    CRC_VAL_HE_7K_COUNTS,
)

ARCHIVES: dict[str, tuple[ArchivePart, ...]] = {
    "nct_crc_he_100k": (
        ArchivePart(
            RemoteFile(
                "NCT-CRC-HE-100K.zip",
                _KATHER + "NCT-CRC-HE-100K.zip",
                "6fd702d11df6292bc054397ae038a464",
                11_690_284_003,
            ),
            "train",
            NCT_CRC_HE_100K_COUNTS,
        ),
        CRC_VAL_HE_7K,
    ),
    "nct_crc_he_100k_nonorm": (
        ArchivePart(
            RemoteFile(
                "NCT-CRC-HE-100K-NONORM.zip",
                _KATHER + "NCT-CRC-HE-100K-NONORM.zip",
                "035777cf327776a71a05c95da6d6325f",
            ),
            "train",
            total=100_000,  # per-class counts are published for the normalised version only
        ),
        CRC_VAL_HE_7K,
    ),
}

BLOODMNIST_CLASSES = (
    "basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
    "platelet",
)  # fmt: skip
ARRAYS: dict[str, ArraySet] = {
    # PathMNIST: NCT-CRC-HE-100K split 9:1 into train/val, CRC-VAL-HE-7K as test, 28x28.
    "pathmnist": ArraySet(
        RemoteFile(
            "pathmnist.npz", _MEDMNIST + "pathmnist.npz", "a8b06965200029087d5bd730944a56c1"
        ),
        ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"),
        {"train": 89996, "val": 10004, "test": 7180},
    ),
    "bloodmnist": ArraySet(
        RemoteFile(
            "bloodmnist.npz", _MEDMNIST + "bloodmnist.npz", "7053d0359d879ad8a5505303e11de1dc"
        ),
        BLOODMNIST_CLASSES,
        {"train": 11959, "val": 1712, "test": 3421},
    ),
}

AML_MUNICH_COUNTS = {
    "BAS": 79, "EBO": 78, "EOS": 424, "KSC": 15, "LYA": 11, "LYT": 3937, "MMZ": 15, "MOB": 26,
    "MON": 1789, "MYB": 42, "MYO": 3268, "NGB": 109, "NGS": 8484, "PMB": 18, "PMO": 70,
}  # fmt: skip
AML_MUNICH_SOURCE = (
    "get AML-Cytomorphology_LMU from The Cancer Imaging Archive "
    "(https://doi.org/10.7937/tcia.2019.36f5o9ld; TCIA's download needs its NBIA Data Retriever), "
    "then set data.root to the folder holding the 15 class folders BAS/ EBO/ ... PMO/"
)


# ---------------------------------------------------------------- listing what is on disk


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _broken_link(path: Path) -> str | None:
    """Why a directory entry is neither a file nor a folder one can read (None if it is one):
    a symlink to nothing or a symlink loop. os.stat follows links, and says which."""
    try:
        os.stat(path)
    except OSError as error:
        target = os.readlink(path) if path.is_symlink() else None
        if error.errno == errno.ELOOP:
            return f"{path}: a symlink loop ({path.name} -> {target}); fix or remove the link"
        if target is not None:
            return f"{path}: a symlink to {target}, which does not exist; fix or remove the link"
        return f"{path}: cannot read ({error.strerror}); check the file"
    if not (path.is_file() or path.is_dir()):
        return f"{path}: not a regular file (a socket, pipe or device); remove it"
    return None


@dataclass
class Listing:
    """What a folder dataset's tree holds, entry by entry: every file under the root ends in
    `files` (packed, or named by prepare), in an error, or in `hidden` / `outside` (warned)."""

    files: list[Path]
    classes: list[str]
    hidden: list[Path]  # names starting with '.' (.DS_Store, .ipynb_checkpoints): left out
    outside: list[Path]  # files in the root, in no class folder: left out


def _entries(folder: Path, listing: Listing) -> list[Path]:
    """The visible entries of `folder`, sorted; hidden ones are noted; a broken link stops."""
    visible = []
    for path in sorted(folder.iterdir()):
        if _is_hidden(path):
            if path.name != DONE:  # the marker extract_zip leaves
                listing.hidden.append(path)
            continue
        problem = _broken_link(path)
        if problem is not None:
            raise UserError(problem)
        visible.append(path)
    return visible


def _class_files(class_dir: Path, recursive: bool, listing: Listing, seen: set[str]) -> list[Path]:
    """Every file of one class folder; its subfolders are an error unless `recursive`."""
    files = []
    for path in _entries(class_dir, listing):
        if path.is_file():
            files.append(path)
            continue
        if not recursive:
            inside = sum(1 for p in path.rglob("*") if not _is_hidden(p) and p.is_file())
            raise UserError(
                f"{path}: a folder inside a class folder ({inside} files); set data.recursive: "
                f"true to give its images the class {class_dir.name}, or move them out"
            )
        real = os.path.realpath(path)
        if real in seen:  # a link back up the tree would be walked for ever
            raise UserError(f"{path}: a link to a folder already listed ({real}); remove it")
        seen.add(real)
        files += _class_files(path, recursive, listing, seen)
    return files


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))


def _descend(root: Path) -> Path:
    """Unpacked archives often wrap the class folders in one top folder: step into it."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        else:
            return root


def _frame(
    paths: list[Path], class_names: list[str], subsets: list[str] | str, cache: Path | None
) -> pd.DataFrame:
    """Manifest rows for image files: md5s are computed here, on a few threads (`cache`: a
    file of md5s known from an earlier listing, fetch.md5_files)."""
    return pd.DataFrame(
        {
            "source": [str(p.resolve()) for p in paths],
            "member": "",
            "row": -1,
            "class_name": class_names,
            "subset": subsets,
            "md5": md5_files(paths, desc="md5 images", cache=cache),
        },
        columns=COLUMNS,
    )


def list_class_tree(
    root: Path,
    subset: str = "train",
    recursive: bool = False,
    unlabeled_dir: str | None = None,
    cache: Path | None = None,
) -> pd.DataFrame:
    """`<root>/<class>/<image>` -> manifest rows (classes sorted, images sorted). With
    `recursive`, images in subfolders of a class folder belong to that class. A folder named
    `unlabeled_dir` holds images without a label (subset unlabeled; its subfolders are walked)."""
    listing = Listing([], [], [], [])
    class_dirs, unlabeled = [], []
    for entry in _entries(root, listing):
        if entry.is_dir() and entry.name == unlabeled_dir:
            unlabeled = _class_files(entry, True, listing, {os.path.realpath(entry)})
        else:
            (class_dirs if entry.is_dir() else listing.outside).append(entry)
    if not class_dirs:
        raise UserError(f"{root}: no class folders inside (expected <root>/<class>/<image>)")
    for class_dir in class_dirs:
        files = _class_files(class_dir, recursive, listing, {os.path.realpath(class_dir)})
        if not files:
            raise UserError(f"{class_dir}: class folder is empty; remove it or add its images")
        listing.files += files
        listing.classes += [class_dir.name.strip()] * len(files)
    subsets = [subset] * len(listing.files) + [UNLABELED] * len(unlabeled)
    listing.files += unlabeled
    listing.classes += [""] * len(unlabeled)
    if listing.outside:
        warnings.warn(
            f"left out {len(listing.outside)} files in {root} that are in no class folder, "
            f"e.g. {listing.outside[0].name}",
            stacklevel=2,
        )
    if listing.hidden:
        warnings.warn(
            f"left out {len(listing.hidden)} hidden files and folders (names starting with "
            f"'.'), e.g. {listing.hidden[0]}",
            stacklevel=2,
        )
    return _frame(listing.files, listing.classes, subsets, cache)


def list_unlabeled_folder(root: Path, cache: Path | None = None) -> pd.DataFrame:
    """Every file under `root` (subfolders included, hidden names left out): images without a
    label (data.unlabeled_root)."""
    listing = Listing([], [], [], [])
    files = _class_files(root, True, listing, {os.path.realpath(root)})
    if not files:
        raise UserError(f"{root}: no images inside (data.unlabeled_root)")
    return _frame(files, [""] * len(files), UNLABELED, cache)


def list_csv(csv: Path, unlabeled_only: bool = False, cache: Path | None = None) -> pd.DataFrame:
    """A CSV of `path,label[,subset]` and any columns of your own (patient, slide: kept for
    split.group); relative paths are relative to the CSV's folder. A row with an empty label,
    or subset `unlabeled`, is an image without a label. `unlabeled_only` (data.unlabeled_root):
    the CSV needs only `path`, and every row is unlabeled."""
    expected = "path" if unlabeled_only else "path,label[,subset]"
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserError(
            f"{csv}: empty file; expected a header {expected} and a row per image"
        ) from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise UserError(f"{csv}: cannot read as CSV ({error})") from None
    table.columns = table.columns.str.strip()
    table = table.apply(lambda column: column.str.strip())  # 'basophil ' is 'basophil'
    if unlabeled_only and "label" not in table:
        table["label"] = ""
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise UserError(f"{csv}: needs columns {expected}; it has {','.join(table.columns)}")
    clash = sorted(set(table.columns) & ({*COLUMNS, *INDEX_COLUMNS} - set(CSV_COLUMNS)))
    if clash:
        raise UserError(f"{csv}: column {clash[0]!r} is a name the manifest uses; rename it")
    if table.empty:
        raise UserError(f"{csv}: no rows")
    subsets = table["subset"] if "subset" in table else pd.Series("train", index=table.index)
    held_out = subsets.isin(("val", "test")) & (table["label"] == "")
    if held_out.any():
        row = int(np.flatnonzero(held_out)[0])
        raise UserError(
            f"{csv} line {row + 2}: empty label on a row of subset {subsets.iloc[row]}; an image "
            "held out for scoring needs its label"
        )
    subsets = subsets.where(table["label"] != "", UNLABELED)
    if unlabeled_only:
        subsets = pd.Series(UNLABELED, index=table.index)
    bad = ~subsets.isin((*SUBSETS, UNLABELED))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{csv} line {row + 2}: subset {subsets.iloc[row]!r} must be one of "
            f"{(*SUBSETS, UNLABELED)}"
        )
    labeled_unlabeled = (subsets == UNLABELED) & (table["label"] != "")
    if labeled_unlabeled.any():
        row = int(np.flatnonzero(labeled_unlabeled)[0])
        raise UserError(
            f"{csv} line {row + 2}: label {table['label'].iloc[row]!r} on a row of subset "
            f"unlabeled; leave the label empty, or give the subset it belongs to"
        )
    paths = [p if p.is_absolute() else csv.parent / p for p in map(Path, table["path"])]
    for line, path in enumerate(paths, start=2):
        if not path.is_file():
            raise UserError(f"{csv} line {line}: {path} is not a file; fix the path or the row")
    frame = _frame(paths, table["label"].tolist(), subsets.tolist(), cache)
    for column in table.columns.difference(CSV_COLUMNS, sort=False):
        frame[column] = table[column].to_numpy()
    return frame


def check_counts(
    manifest: pd.DataFrame,
    where: Path,
    fix: str,
    counts: Mapping[str, int] | None = None,
    total: int | None = None,
) -> None:
    """Compare what was listed with the published counts; a difference is an error naming it."""
    found = manifest["class_name"].value_counts().to_dict()
    if counts is not None:
        missing = sorted(set(counts) - set(found))
        if missing:
            raise UserError(f"{where}: class folders {', '.join(missing)} are missing; {fix}")
        extra = sorted(set(found) - set(counts))
        if extra:
            raise UserError(f"{where}: unexpected class folders {', '.join(extra)}; {fix}")
        for name, expected in counts.items():
            if found[name] != expected:
                raise UserError(
                    f"{where}: class {name} has {found[name]} images, {expected} published; {fix}"
                )
    if total is not None and len(manifest) != total:
        raise UserError(f"{where}: {len(manifest)} images, {total} published; {fix}")


# ---------------------------------------------------------------- one fetcher per kind


def fetch_digits(cfg: DataParams, raw: Path, downloads: Path) -> pd.DataFrame:
    """scikit-learn's 1,797 8x8 handwritten digits, shipped inside the package: no network."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)  # 0..16 -> 0..255
    with atomic_path(raw / "digits.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, images=images)
    names = [str(name) for name in digits.target_names]
    return pd.DataFrame(
        {
            "source": "digits.npz",
            "member": "images",
            "row": np.arange(len(images)),
            "class_name": [names[t] for t in digits.target],
            "subset": "train",
            "md5": [md5_bytes(img.tobytes()) for img in images],
        },
        columns=COLUMNS,
    )


def fetch_folder(cfg: DataParams, raw: Path, downloads: Path) -> pd.DataFrame:
    """Your own images, left where they are: a `<root>/<class>/<image>` tree or a CSV."""
    root = Path(cfg.root or "").expanduser()
    if root.is_file() and root.suffix.lower() == ".csv":
        return list_csv(root, cache=downloads / MD5_CACHE)
    if not root.is_dir():
        raise UserError(
            f"data.root={cfg.root!r}: not a folder or a .csv "
            "(expected <root>/<class>/<image>, or a CSV of path,label)"
        )
    return list_class_tree(
        root, recursive=cfg.recursive, unlabeled_dir=cfg.unlabeled_dir, cache=downloads / MD5_CACHE
    )


def list_unlabeled_root(cfg: DataParams, cache: Path) -> pd.DataFrame:
    """data.unlabeled_root: a folder of images, or a CSV of `path` (and your own columns),
    none of them labeled."""
    root = Path(cfg.unlabeled_root or "").expanduser()
    if root.is_file() and root.suffix.lower() == ".csv":
        return list_csv(root, unlabeled_only=True, cache=cache)
    if not root.is_dir():
        raise UserError(
            f"data.unlabeled_root={cfg.unlabeled_root!r}: not a folder or a .csv of path"
        )
    return list_unlabeled_folder(root, cache)


def fetch_archives(cfg: DataParams, raw: Path, downloads: Path) -> pd.DataFrame:
    """Zenodo zips of class folders (NCT-CRC-HE-100K and its test set CRC-VAL-HE-7K)."""
    frames = []
    for part in ARCHIVES[cfg.name]:
        archive = downloads / part.file.name
        fetch(part.file.url_from(cfg.mirror), archive, part.file.md5)
        target = downloads / archive.stem
        extract_zip(archive, target, part.file.md5)
        root = _descend(target)
        frame = list_class_tree(root, part.subset, cache=downloads / MD5_CACHE)
        check_counts(
            frame,
            root,
            f"the unpacked copy differs from the published dataset: delete {target} and rerun",
            part.counts,
            part.total,
        )
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def fetch_arrays(cfg: DataParams, raw: Path, downloads: Path) -> pd.DataFrame:
    """A MedMNIST .npz: its own train/val/test split, one manifest row per array row."""
    spec = ARRAYS[cfg.name]
    path = downloads / spec.file.name
    fetch(spec.file.url_from(cfg.mirror), path, spec.file.md5)
    frames = []
    for subset in SUBSETS:
        images = iter_rows(path, f"{subset}_images")
        md5s = [md5_bytes(row.tobytes()) for block in images for row in block]
        blocks = iter_rows(path, f"{subset}_labels")
        labels = np.concatenate([block.reshape(len(block), -1)[:, 0] for block in blocks])
        if len(labels) != len(md5s):
            raise UserError(f"{path}: {subset}_images and {subset}_labels differ in length")
        if len(md5s) != spec.totals[subset]:
            raise UserError(
                f"{path}: {len(md5s)} {subset} images, {spec.totals[subset]} published; "
                "delete it and rerun the download"
            )
        if labels.min() < 0 or labels.max() >= len(spec.class_names):
            raise UserError(f"{path}: {subset}_labels outside 0..{len(spec.class_names) - 1}")
        frames.append(
            pd.DataFrame(
                {
                    "source": str(path.resolve()),
                    "member": f"{subset}_images",
                    "row": np.arange(len(md5s)),
                    "class_name": [spec.class_names[i] for i in labels],
                    "subset": subset,
                    "md5": md5s,
                },
                columns=COLUMNS,
            )
        )
    return pd.concat(frames, ignore_index=True)


def fetch_aml_munich(cfg: DataParams, raw: Path, downloads: Path) -> pd.DataFrame:
    """Munich AML cytomorphology: TCIA has no plain URL, so check the user's local copy."""
    if not cfg.root:
        raise UserError(f"data.root is not set: {AML_MUNICH_SOURCE}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root={cfg.root!r} is not a folder: {AML_MUNICH_SOURCE}")
    root = _descend(root)
    present = {p.name for p in _class_folders(root)}
    missing = sorted(set(AML_MUNICH_COUNTS) - present)
    if missing:
        raise UserError(
            f"{root}: class folders {', '.join(missing)} are missing; {AML_MUNICH_SOURCE}"
        )
    extra = sorted(present - set(AML_MUNICH_COUNTS))
    if extra:
        warnings.warn(
            f"{root}: ignoring folders that are not AML classes: {', '.join(extra)}", stacklevel=2
        )
    paths, names = [], []
    listing = Listing([], [], [], [])
    for name in sorted(AML_MUNICH_COUNTS):
        files = _class_files(root / name, False, listing, set())
        paths += files
        names += [name] * len(files)
    frame = _frame(paths, names, "train", downloads / MD5_CACHE)
    check_counts(frame, root, f"the copy is incomplete; {AML_MUNICH_SOURCE}", AML_MUNICH_COUNTS)
    return frame


FETCHERS: dict[str, Callable[[DataParams, Path, Path], pd.DataFrame]] = {
    "digits": fetch_digits,
    "folder": fetch_folder,
    "aml_munich": fetch_aml_munich,
    **{name: fetch_archives for name in ARCHIVES},
    **{name: fetch_arrays for name in ARRAYS},
}


def check_class_names(manifest: pd.DataFrame) -> None:
    """Two class names that differ only in case or spaces are one class typed two ways."""
    first: dict[str, str] = {}
    for name in sorted(manifest["class_name"].unique()):
        key = "".join(name.split()).casefold()
        if key in first:
            raise UserError(
                f"class names {first[key]!r} and {name!r} differ only in case or spaces; "
                "use one spelling"
            )
        first[key] = name


def download_dataset(cfg: DataParams, raw: Path, downloads: Path) -> pd.DataFrame:
    """Fetch (or list and verify) a dataset and write its manifest into `raw`."""
    raw.mkdir(parents=True, exist_ok=True)
    manifest = FETCHERS[cfg.name](cfg, raw, downloads / cfg.name)
    if cfg.unlabeled_root:
        if cfg.name in ARRAYS or cfg.name == "digits":
            raise UserError(
                f"data.unlabeled_root: {cfg.name} is packed from arrays, which cannot be mixed "
                "with image files; use a folder or CSV dataset (data.name: folder)"
            )
        more = list_unlabeled_root(cfg, downloads / cfg.name / MD5_CACHE)
        manifest = pd.concat([manifest, more], ignore_index=True)
    labeled = manifest[manifest["subset"] != UNLABELED]
    if labeled.empty:
        raise UserError(
            f"{cfg.root or cfg.name}: no labeled image; a classifier needs labeled images of at "
            "least 2 classes (the unlabeled ones join them)"
        )
    check_class_names(labeled)
    write_parquet(raw / MANIFEST, manifest)
    return manifest
