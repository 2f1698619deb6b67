"""The decoded-image cache of folder datasets (data/cache.py): a folder is decoded once, read back exactly, and
decoded again whenever a file or an option changes, the entry is damaged, or the cache cannot be written."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli.main import main
from cnnlab.data import cache, folder, images, load_dataset
from cnnlab.data.folder import load_folder

OLD = time.time_ns() - 3600 * 10**9  # an hour ago: files older than cache.SETTLE_NS, as a user's usually are


def write_image(path: Path, seed: int, size: tuple[int, int] = (6, 8), mode: str = "RGB") -> None:
    """A small image of seeded random pixels (height, width), PNG or JPEG by the name's ending."""
    shape = (*size, 3) if mode == "RGB" else size
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)


def age(root: Path, stamp: int = OLD) -> None:
    """Give root (a file) or every file under it the modification time `stamp` (ns)."""
    for path in [root, *root.rglob("*")]:
        if path.is_file():
            os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def pets(tmp_path: Path) -> Path:
    """cat/ and dog/, 4 images each: PNGs and JPEGs, one grayscale, settled (an hour old)."""
    root = tmp_path / "pets"
    for i in range(4):
        write_image(root / "cat" / f"c{i}.png", seed=i)
        write_image(root / "dog" / f"d{i}.jpg", seed=10 + i, mode="L" if i == 0 else "RGB")
    age(root)
    return root


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own cache folder, so it sees only its entries."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "decoded"


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many images each decoding pass decoded (one item per pass)."""
    calls: list[int] = []
    real = folder._decode_all

    def counting(files, *args, **kwargs):
        calls.append(len(files))
        return real(files, *args, **kwargs)

    monkeypatch.setattr(folder, "_decode_all", counting)
    return calls


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any decoding of an image fail the test."""
    def boom(*args, **kwargs):
        raise AssertionError("decoded although the cache holds the images")

    monkeypatch.setattr(folder, "_decode_all", boom)
    monkeypatch.setattr(images, "read", boom)


def assert_same(a, b) -> None:
    assert a.classes == b.classes and a.name == b.name and a.source == b.source
    for split in ("train", "test"):
        x, y = a.split(split), b.split(split)
        assert x.x.dtype == torch.uint8 and torch.equal(x.x, y.x) and torch.equal(x.y, y.y)


def entries(folder_: Path) -> list[str]:
    return sorted(p.name for p in folder_.glob("*.safetensors"))


def test_second_load_reads_the_cache_exactly(pets, own_cache, monkeypatch):
    first = load_folder(pets, image_size=(6, 8))
    assert first.note.startswith("decoded 8 images in ") and f"cached in {own_cache}" in first.note
    assert len(entries(own_cache)) == 1 and not list(own_cache.glob("*.partial"))
    fresh = load_folder(pets, image_size=(6, 8), cache=False)  # today's decoding, no cache involved
    assert_same(first, fresh)
    assert fresh.note.startswith("decoded 8 images") and "cache" not in fresh.note

    with monkeypatch.context() as m:
        forbid_decoding(m)
        second = load_folder(pets, image_size=(6, 8))
    assert_same(second, fresh)
    assert second.note.startswith(f"8 decoded images read from the cache {own_cache}")
    assert second.input_shape == (3, 6, 8) and second.classes == ["cat", "dog"]
    assert sorted(second.train.y.tolist() + second.test.y.tolist()) == [0] * 4 + [1] * 4
    # Through a dataset reference, without --image-size: another policy ("the first image's size", which the
    # files' key decides), whose second load reads not even the first image.
    by_ref = load_dataset(f"folder:{pets}")
    with monkeypatch.context() as m:
        forbid_decoding(m)
        assert_same(load_dataset(f"folder:{pets}"), by_ref)
    assert len(entries(own_cache)) == 2


@pytest.mark.parametrize("change", ["touch", "bytes", "add", "remove"])
def test_a_changed_file_makes_a_new_entry_in_place_of_the_old(pets, own_cache, decodes, change):
    load_folder(pets, image_size=4)
    old = entries(own_cache)
    target = pets / "cat" / "c1.png"
    if change == "touch":
        age(target, OLD + 10**9)
    elif change == "bytes":
        before = target.stat().st_size
        write_image(target, seed=99, size=(7, 9))
        age(target)  # the same mtime as before: the size tells the change
        assert target.stat().st_size != before
    elif change == "add":
        write_image(pets / "cat" / "c9.png", seed=9)
        age(pets)
    else:
        target.unlink()
    data = load_folder(pets, image_size=4)
    assert decodes == [8, 9 if change == "add" else 7 if change == "remove" else 8]
    assert_same(data, load_folder(pets, image_size=4, cache=False))  # decodes a third time
    new = entries(own_cache)
    assert len(new) == 1 and new != old  # the older entry of this folder and policy is gone
    assert new[0].split("-")[0] == old[0].split("-")[0]  # same group: same folder, same options
    load_folder(pets, image_size=4)
    assert len(decodes) == 3  # this load read the new entry


@pytest.mark.parametrize("options", [{"image_size": 5}, {"channels": 1}, {"seed": 1}, {"test_fraction": 0.5}])
def test_other_options_make_another_entry(pets, own_cache, decodes, options):
    base = load_folder(pets, image_size=4)
    other = load_folder(pets, **{"image_size": 4, **options})
    assert len(decodes) == 2 and len(entries(own_cache)) == 2  # both kept: each folder and policy has its entry
    if "image_size" in options or "channels" in options:
        assert other.input_shape != base.input_shape
    load_folder(pets, image_size=4)
    load_folder(pets, **{"image_size": 4, **options})
    assert len(decodes) == 2


def test_fresh_files_are_decoded_but_not_cached(pets, own_cache, decodes):
    write_image(pets / "dog" / "new.png", seed=5)  # just written: its mtime could still be shared by a rewrite
    data = load_folder(pets, image_size=4)
    assert "not cached, as some files changed in the last 2 s" in data.note
    assert entries(own_cache) == []
    load_folder(pets, image_size=4)
    assert len(decodes) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip a pixel", "empty"])
def test_a_damaged_entry_is_decoded_again_and_replaced(pets, own_cache, decodes, damage):
    first = load_folder(pets, image_size=4)
    [name] = entries(own_cache)
    path = own_cache / name
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 64 + data[64:])
    elif damage == "flip a pixel":  # a whole file whose bytes changed: the CRC tells
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        path.write_bytes(b"")
    again = load_folder(pets, image_size=4)
    assert len(decodes) == 2 and again.note.startswith("decoded 8 images")
    assert_same(again, first)
    assert entries(own_cache) == [name] and path.read_bytes() == data  # replaced by a whole entry
    load_folder(pets, image_size=4)
    assert len(decodes) == 2


def test_an_unwritable_cache_still_loads(pets, tmp_path, monkeypatch, decodes):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a folder cannot be made inside it, not even by root
    monkeypatch.setenv("CNNLAB_CACHE", str(blocker))
    first = load_folder(pets, image_size=4)
    assert f"the cache folder {blocker / 'decoded'} cannot be written" in first.note
    assert_same(load_folder(pets, image_size=4), first)
    assert len(decodes) == 2  # only slower
    assert cache.entries() == []


def test_skipped_files_are_recorded_and_the_entry_stays_valid(pets, own_cache, monkeypatch):
    (pets / "cat" / "bad.png").write_bytes(b"not an image")
    age(pets)
    first = load_folder(pets, image_size=4, skip_bad=True)
    assert "1 unreadable files left out (--skip-bad-images): cat/bad.png" in first.note
    assert len(first.train) + len(first.test) == 8
    with monkeypatch.context() as m:
        forbid_decoding(m)
        second = load_folder(pets, image_size=4, skip_bad=True)
    assert second.note.startswith("8 decoded images read from the cache")
    assert second.note.endswith("; 1 unreadable files left out (--skip-bad-images): cat/bad.png")
    assert_same(second, first)


def test_entries_and_clear(pets, tmp_path, own_cache, decodes):
    other = tmp_path / "other"
    for i in range(2):
        write_image(other / "x" / f"{i}.png", seed=i)
        write_image(other / "y" / f"{i}.png", seed=5 + i)
    age(other)
    load_folder(pets, image_size=4)
    load_folder(other, image_size=4)
    listed = cache.entries()
    assert sorted((e.source, e.images) for e in listed) == [(str(other.resolve()), 4), (str(pets.resolve()), 8)]
    assert all(e.size == e.path.stat().st_size > 0 for e in listed)
    assert cache.clear() == listed
    assert cache.entries() == [] and entries(own_cache) == []
    load_folder(pets, image_size=4)
    assert len(decodes) == 3


def test_cache_folder_is_shared_with_transfer_learning(tmp_path, monkeypatch):
    from cnnlab.training import transfer

    assert transfer.cache_dir is cache.cache_dir
    monkeypatch.delenv("CNNLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.decoded_dir() == tmp_path / "xdg" / "cnnlab" / "decoded"


def test_datasets_command_shows_and_clears_the_cache(pets, own_cache, capsys):
    load_folder(pets, image_size=4)
    [name] = entries(own_cache)
    size = (own_cache / name).stat().st_size
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert f"decoded-image cache (folder datasets decoded once): {own_cache}, 1 entries, " in out
    assert str(pets.resolve()) in out and name in out
    assert main(["datasets", "--clear-cache"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("removed 1 decoded-image cache entries (") and out[0].endswith(f") from {own_cache}")
    assert out[1].split()[0] == name and str(pets.resolve()) in out[1]
    assert entries(own_cache) == [] and size > 0
    assert main(["datasets"]) == 0
    assert f"{own_cache}, 0 entries, 0 B" in capsys.readouterr().out
