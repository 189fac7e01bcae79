"""Datasets: downloads from a loopback server, safe unpacking, the registry's checks, prepare.

The archives are built here from the real NCT-CRC-HE-100K / CRC-VAL-HE-7K tiles in ../shared,
in the datasets' own layout (`NCT-CRC-HE-100K/<CLASS>/<tile>.tif`).
"""

from __future__ import annotations

import hashlib
import io
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from s5cl.config.params import DataParams, DatasetName, SplitParams
from s5cl.data import registry
from s5cl.data.archive import extract_zip
from s5cl.data.fetch import fetch, md5_file
from s5cl.data.packed import PackedDataset
from s5cl.data.packing import INDEX, pack_images
from s5cl.data.registry import ArchivePart, ArraySet, RemoteFile, download_dataset
from s5cl.data.splitting import make_split
from s5cl.errors import UserError

from .conftest import PBC, SHARED, needs_shared, run, zip_tree

TIF = SHARED / "crc-tiles-tif"
PNG = SHARED / "crc-tiles"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def pil_pixels(path: Path | Image.Image, size: int) -> np.ndarray:
    """The oracle: PIL's own decode, RGB, bilinear resize."""
    image = Image.open(path) if isinstance(path, Path) else path
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image)


def as_tiff(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="TIFF")
    return buffer.getvalue()


def nct_archives() -> dict[str, dict[str, bytes]]:
    """Trees in the Zenodo zips' layout: the 9 NCT-CRC-HE-100K tiles (TIF) + the 32 CRC tiles
    (PNG, stored as TIF as in the original); the 9 CRC-VAL-HE-7K tiles as its test set."""
    train = {f"NCT-CRC-HE-100K/{p.parent.name}/{p.name}": p.read_bytes()
             for p in sorted(TIF.glob("nct100k/*/*.tif"))}  # fmt: skip
    train |= {
        f"NCT-CRC-HE-100K/{p.parent.name}/{p.stem}.tif": as_tiff(p)
        for p in sorted(PNG.glob("*/*.png"))
    }
    test = {f"CRC-VAL-HE-7K/{p.parent.name}/{p.name}": p.read_bytes()
            for p in sorted(TIF.glob("val7k/*/*.tif"))}  # fmt: skip
    return {"NCT-CRC-HE-100K.zip": train, "CRC-VAL-HE-7K.zip": test}


def class_counts(tree: dict[str, bytes]) -> dict[str, int]:
    return pd.Series([name.split("/")[1] for name in tree]).value_counts().to_dict()


# ---------------------------------------------------------------- fetch


@needs_shared()
def test_download_verifies_md5_and_a_second_run_downloads_nothing(file_server, tmp_path):
    data = zip_tree(nct_archives()["CRC-VAL-HE-7K.zip"])
    file_server.files["CRC-VAL-HE-7K.zip"] = data
    dest = tmp_path / "CRC-VAL-HE-7K.zip"
    first = fetch(f"{file_server.url}/CRC-VAL-HE-7K.zip", dest, md5(data), progress=False)
    assert (first.downloaded, first.resumed_from, first.cached) == (len(data), 0, False)
    assert dest.read_bytes() == data
    second = fetch(f"{file_server.url}/CRC-VAL-HE-7K.zip", dest, md5(data), progress=False)
    assert second.cached and second.downloaded == 0
    assert len(file_server.log) == 1  # the second run asked the server for nothing


@needs_shared()
def test_an_interrupted_download_resumes_with_range_not_from_scratch(file_server, tmp_path):
    data = zip_tree(nct_archives()["NCT-CRC-HE-100K.zip"])
    half = len(data) // 2
    file_server.files["NCT-CRC-HE-100K.zip"] = data
    url, dest = f"{file_server.url}/NCT-CRC-HE-100K.zip", tmp_path / "NCT-CRC-HE-100K.zip"

    # The server drops the connection half-way and this run gives up: the part file stays.
    file_server.cut["NCT-CRC-HE-100K.zip"] = half
    with pytest.raises(UserError, match=f"keeps {half} bytes: rerun to resume"):
        fetch(url, dest, md5(data), retries=0, progress=False)
    assert not dest.exists()
    assert (tmp_path / "NCT-CRC-HE-100K.zip.part").stat().st_size == half

    # The next run asks only for the rest.
    report = fetch(url, dest, md5(data), progress=False)
    assert file_server.log == [
        ("NCT-CRC-HE-100K.zip", None, half),
        ("NCT-CRC-HE-100K.zip", f"bytes={half}-", len(data) - half),
    ]
    assert (report.resumed_from, report.downloaded) == (half, len(data) - half)
    assert md5_file(dest) == md5(data)

    # Within one run, a dropped connection is retried (with backoff) and resumed the same way.
    dest.unlink()
    file_server.log.clear()
    file_server.cut["NCT-CRC-HE-100K.zip"] = 1000
    report = fetch(url, dest, md5(data), backoff=0.01, progress=False)
    assert [entry[1] for entry in file_server.log] == [None, "bytes=1000-"]
    assert report.downloaded == len(data) and dest.read_bytes() == data


def test_a_wrong_md5_is_a_clear_error_and_nothing_is_renamed_into_place(file_server, tmp_path):
    file_server.files["pathmnist.npz"] = b"not the file you want" * 1000
    dest = tmp_path / "pathmnist.npz"
    with pytest.raises(UserError) as error:
        fetch(f"{file_server.url}/pathmnist.npz", dest, "0" * 32, progress=False)
    message = str(error.value)
    assert "pathmnist.npz" in message and "expected 000" in message and "deleted" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no file, no .part


def test_http_errors_are_one_line(file_server, tmp_path):
    with pytest.raises(UserError, match=r"/missing.zip: HTTP 404 .* check the address"):
        fetch(f"{file_server.url}/missing.zip", tmp_path / "m.zip", "0" * 32, progress=False)
    with pytest.raises(UserError, match=r"failed after 2 tries .* rerun to resume"):
        fetch("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", "0" * 32, retries=1,
              backoff=0.01, progress=False)  # fmt: skip  # port 9: nothing listens


# ---------------------------------------------------------------- unpacking


def test_extraction_refuses_members_that_escape_the_target(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(zip_tree({"NCT-CRC-HE-100K/ADI/a.tif": b"x", "../escaped.txt": b"gotcha"}))
    target = tmp_path / "out" / "evil"
    with pytest.raises(UserError, match=r"member '\.\./escaped\.txt' would be written outside"):
        extract_zip(archive, target, md5(archive.read_bytes()))
    assert not target.exists()
    assert not (tmp_path / "out" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()
    absolute = tmp_path / "abs.zip"
    absolute.write_bytes(zip_tree({"/etc/passwd-copy": b"x"}))
    with pytest.raises(UserError, match="outside the target"):
        extract_zip(absolute, tmp_path / "abs", "x")


# ---------------------------------------------------------------- registry, end to end


def test_every_dataset_name_has_a_fetcher():
    assert set(registry.FETCHERS) == set(typing.get_args(DatasetName))


@needs_shared()
def test_nct_registry_downloads_unpacks_checks_counts_and_packs(file_server, tmp_path, monkeypatch):
    trees = nct_archives()
    parts = []
    for (name, tree), subset in zip(trees.items(), ("train", "test"), strict=True):
        file_server.files[name] = zip_tree(tree)
        parts.append(
            ArchivePart(
                RemoteFile(name, "https://unused.invalid/" + name, md5(file_server.files[name])),
                subset,
                class_counts(tree),
            )
        )
    monkeypatch.setitem(registry.ARCHIVES, "nct_crc_he_100k", tuple(parts))
    cfg = DataParams(name="nct_crc_he_100k", mirror=file_server.url + "/")
    raw, downloads = tmp_path / "raw", tmp_path / "downloads"

    manifest = download_dataset(cfg, raw, downloads)
    assert manifest["subset"].value_counts().to_dict() == {"train": 41, "test": 9}
    assert manifest["class_name"].nunique() == 9
    unpacked = downloads / "nct_crc_he_100k" / "NCT-CRC-HE-100K" / "NCT-CRC-HE-100K"
    assert (unpacked / "ADI" / "nct100k_adi.tif").read_bytes() == (
        TIF / "nct100k/ADI/nct100k_adi.tif"
    ).read_bytes()

    requests = len(file_server.log)
    download_dataset(
        cfg, raw, downloads
    )  # verified zips, extracted trees: nothing is fetched again
    assert len(file_server.log) == requests == 2

    stats = pack_images(raw, tmp_path / "packed", size=224, workers=2)
    packed = PackedDataset.open(tmp_path / "packed")
    index = pd.read_parquet(tmp_path / "packed" / INDEX)
    for i in range(len(index)):  # native size: every pixel exactly as PIL decodes the TIF
        assert np.array_equal(packed.images[i], pil_pixels(Path(index["path"][i]), 224))
    assert stats["counts"]["test"] == {name: 1 for name in stats["class_names"]}
    train = packed.images[(index["subset"] == "train").to_numpy()] / 255.0
    assert np.allclose(stats["mean"], train.reshape(-1, 3).mean(0), atol=1e-6)
    assert np.allclose(stats["std"], train.reshape(-1, 3).std(0), atol=1e-5)

    split = make_split(
        packed.labels, SplitParams(labels_per_class=1, val_fraction=0.0), 0,
        packed.class_names, index["subset"].to_numpy(),
    )  # fmt: skip
    assert (split["role"] == "test").to_numpy().tolist() == (index["subset"] == "test").tolist()


@needs_shared()
def test_a_count_that_differs_from_the_published_one_is_named(file_server, tmp_path, monkeypatch):
    tree = nct_archives()["CRC-VAL-HE-7K.zip"]
    file_server.files["CRC-VAL-HE-7K.zip"] = data = zip_tree(tree)
    counts = {**class_counts(tree), "TUM": 2}
    part = ArchivePart(RemoteFile("CRC-VAL-HE-7K.zip", "https://unused.invalid", md5(data)),
                       "test", counts)  # fmt: skip
    monkeypatch.setitem(registry.ARCHIVES, "nct_crc_he_100k", (part,))
    cfg = DataParams(name="nct_crc_he_100k", mirror=file_server.url)
    with pytest.raises(UserError, match=r"class TUM has 1 images, 2 published; .* delete .* rerun"):
        download_dataset(cfg, tmp_path / "raw", tmp_path / "downloads")


@needs_shared()
def test_medmnist_npz_keeps_its_own_split_and_its_pixels(file_server, tmp_path, monkeypatch):
    """A MedMNIST-format npz made from real blood-cell images (28x28, like BloodMNIST)."""
    files = sorted(PBC.glob("*/*.jpg"))[::40]  # 6 per class, classes in sorted order
    names = sorted({p.parent.name for p in files})
    images = np.stack([pil_pixels(p, 28) for p in files])
    labels = np.array([[names.index(p.parent.name)] for p in files], dtype=np.uint8)
    subset_of = np.array(["train", "val", "test"])[np.arange(len(files)) % 3]
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, **{f"{s}_{kind}": array[subset_of == s] for s in ("train", "val", "test")
                   for kind, array in (("images", images), ("labels", labels))},
    )  # fmt: skip
    file_server.files["bloodmnist.npz"] = data = buffer.getvalue()
    totals = {s: int((subset_of == s).sum()) for s in ("train", "val", "test")}
    spec = ArraySet(RemoteFile("bloodmnist.npz", "https://unused.invalid", md5(data)),
                    tuple(names), totals)  # fmt: skip
    monkeypatch.setitem(registry.ARRAYS, "bloodmnist", spec)
    raw = tmp_path / "raw"

    download_dataset(
        DataParams(name="bloodmnist", mirror=file_server.url), raw, tmp_path / "downloads"
    )
    stats = pack_images(raw, tmp_path / "packed", size=32)
    packed = PackedDataset.open(tmp_path / "packed")
    index = pd.read_parquet(tmp_path / "packed" / INDEX)
    assert {s: sum(c.values()) for s, c in stats["counts"].items()} == totals
    order = np.concatenate([np.flatnonzero(subset_of == s) for s in ("train", "val", "test")])
    for row, source in enumerate(order):  # npz rows, resized 28 -> 32, exactly as PIL does it
        assert np.array_equal(packed.images[row], pil_pixels(Image.fromarray(images[source]), 32))
        assert packed.class_names[packed.labels[row]] == files[source].parent.name
    split = make_split(packed.labels, SplitParams(labels_per_class=1), 0, packed.class_names,
                       index["subset"].to_numpy())  # fmt: skip
    assert split["role"].value_counts()["val"] == totals["val"]
    assert split["role"].value_counts()["test"] == totals["test"]


@needs_shared()
def test_prepare_on_pbc_matches_pil_and_stats_match_numpy(tmp_path):
    raw = tmp_path / "raw"
    download_dataset(DataParams(name="folder", root=str(PBC)), raw, tmp_path / "downloads")
    stats = pack_images(raw, tmp_path / "packed", size=48, workers=2)
    packed = PackedDataset.open(tmp_path / "packed")
    index = pd.read_parquet(tmp_path / "packed" / INDEX)
    assert len(index) == 8 * 240 and stats["shape"] == [8 * 240, 48, 48, 3]
    for i in range(0, len(index), 97):
        assert np.array_equal(packed.images[i], pil_pixels(Path(index["path"][i]), 48))
    pixels = np.asarray(packed.images).reshape(-1, 3) / 255.0
    assert np.allclose(stats["mean"], pixels.mean(0), atol=1e-6)
    assert np.allclose(stats["std"], pixels.std(0), atol=1e-5)


@needs_shared()
def test_folder_csv_grayscale_and_rgba_and_its_mistakes(tmp_path):
    tile = next(iter(sorted(TIF.glob("val7k/*/*.tif"))))
    Image.open(tile).convert("L").save(tmp_path / "gray.png")
    Image.open(tile).convert("RGBA").save(tmp_path / "rgba.png")
    csv = tmp_path / "labels.csv"
    csv.write_text(f"path,label,subset\ngray.png,a,train\nrgba.png,b,test\n{tile},a,train\n")
    raw = tmp_path / "raw"
    download_dataset(DataParams(name="folder", root=str(csv)), raw, tmp_path / "downloads")
    pack_images(raw, tmp_path / "packed", size=32, workers=1)
    packed = PackedDataset.open(tmp_path / "packed")
    assert np.array_equal(packed.images[0], pil_pixels(tmp_path / "gray.png", 32))
    assert np.array_equal(packed.images[1], pil_pixels(tmp_path / "rgba.png", 32))
    assert pd.read_parquet(tmp_path / "packed" / INDEX)["subset"].tolist() == [
        "train", "test", "train",
    ]  # fmt: skip

    csv.write_text("file,class\ngray.png,a\n")
    with pytest.raises(UserError, match=r"labels.csv: needs columns path,label"):
        download_dataset(DataParams(name="folder", root=str(csv)), raw, tmp_path)
    csv.write_text("path,label\ngray.png,a\nnope.png,b\n")
    with pytest.raises(UserError, match=r"labels.csv line 3: .*nope.png is not a file"):
        download_dataset(DataParams(name="folder", root=str(csv)), raw, tmp_path)

    broken = tmp_path / "tree" / "a"
    broken.mkdir(parents=True)
    (broken / "broken.png").write_bytes(b"\x89PNG not really")
    download_dataset(DataParams(name="folder", root=str(tmp_path / "tree")), raw, tmp_path)
    with pytest.raises(UserError, match=r"broken.png: not an image .* remove or replace it"):
        pack_images(raw, tmp_path / "packed2", size=32, workers=1)


@needs_shared()
def test_aml_munich_checks_the_local_copy_and_says_where_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"not a folder: get AML-Cytomorphology_LMU .* TCIA"):
        download_dataset(
            DataParams(name="aml_munich", root=str(tmp_path / "nowhere")), tmp_path, tmp_path
        )
    with pytest.raises(UserError, match=r"class folders BAS, EBO, .* missing; get AML"):
        download_dataset(DataParams(name="aml_munich", root=str(PBC)), tmp_path, tmp_path)

    # The TCIA layout (AML-Cytomorphology_LMU/<CLASS>/*.tiff), built from real blood-cell images.
    copy = tmp_path / "tcia" / "AML-Cytomorphology_LMU"
    cells = sorted(PBC.glob("*/*.jpg"))
    for i, name in enumerate(sorted(registry.AML_MUNICH_COUNTS)):
        (copy / name).mkdir(parents=True)
        for j in range(2):
            Image.open(cells[2 * i + j]).save(copy / name / f"{name}_{j:04d}.tiff")
    monkeypatch.setattr(registry, "AML_MUNICH_COUNTS", dict.fromkeys(registry.AML_MUNICH_COUNTS, 2))
    manifest = download_dataset(
        DataParams(name="aml_munich", root=str(tmp_path / "tcia")), tmp_path, tmp_path
    )
    assert len(manifest) == 30 and manifest["class_name"].nunique() == 15
    (copy / "PMO" / "PMO_0001.tiff").unlink()
    with pytest.raises(UserError, match=r"class PMO has 1 images, 2 published; the copy is"):
        download_dataset(
            DataParams(name="aml_munich", root=str(tmp_path / "tcia")), tmp_path, tmp_path
        )


# ---------------------------------------------------------------- the stage scripts


def _stage(project_dir: Path, stage: str, *sets: str):
    args = [arg for item in sets for arg in ("--set", item)]
    return run(["python", f"stages/{stage}.py", *args], project_dir, check=False)


def _last_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1].split("\r")[-1]


def test_download_stage_mistakes_end_in_one_line(project, file_server):
    # The real registry entry, served a file that is not the published NCT-CRC-HE-100K.zip.
    file_server.files["NCT-CRC-HE-100K.zip"] = zip_tree({"NCT-CRC-HE-100K/ADI/a.tif": b"x"})
    line = _last_line(
        _stage(project, "download", "data.name=nct_crc_he_100k", f"data.mirror={file_server.url}")
    )
    assert line.startswith("download: error: NCT-CRC-HE-100K.zip: downloaded file has md5 ")
    assert "expected 6fd702d11df6292bc054397ae038a464; it was deleted" in line
    assert not any((project / "data/downloads").rglob("*.zip*"))

    line = _last_line(_stage(project, "download", "data.name=aml_munich", "data.root=/no/such"))
    assert "data.root='/no/such' is not a folder: get AML-Cytomorphology_LMU" in line
    line = _last_line(_stage(project, "download", "data.name=pathmnist", "data.mirror=ftp://x"))
    assert line.endswith("data.mirror = 'ftp://x': must be an http:// or https:// base URL")
