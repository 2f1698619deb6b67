"""Datasets: the shipped sample, the real files, folders of images, patterns, splits and batches."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import BatchLoader, Split, channel_stats, load_dataset, train_val_split
from cnnlab.data.idx import write_idx
from cnnlab.data.loader import fits_on
from cnnlab.data.patterns import _offsets
from cnnlab.data.preprocess import Preprocess
from cnnlab.data.sources import FASHION_CLASSES, adapt, locate
from cnnlab.errors import DataError, UsageError


def test_shipped_sample():
    data = load_dataset("sample")
    assert data.train.x.shape == (8000, 1, 28, 28) and data.train.x.dtype == torch.uint8
    assert data.test.x.shape == (2000, 1, 28, 28)
    assert data.classes == FASHION_CLASSES
    assert data.train.y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # official order


def test_fashion_mnist_from_data_dir_and_env(datasets_dir, monkeypatch):
    data = load_dataset("fashion-mnist", data_dir=datasets_dir)
    assert (len(data.train), len(data.test)) == (60000, 10000)
    mean, std = channel_stats(data.train.x)
    assert mean[0] == pytest.approx(0.2861, abs=1e-4) and std[0] == pytest.approx(0.3528, abs=1e-4)
    monkeypatch.setenv("CNNLAB_DATA", str(datasets_dir))
    assert len(load_dataset("mnist").test) == 10000


def test_torchvision_layout_with_raw_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    x = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(6, dtype=np.uint8))
    data = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert torch.equal(data.train.x[:, 0], torch.from_numpy(x))
    assert locate("fashion-mnist", tmp_path) == str(raw)


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "mnist") in message
    assert "--download" in message and "--data-dir" in message and "--dataset sample" in message


def test_cifar10_missing_points_at_the_jpeg_archive(datasets_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(DataError, match=r"tar xzf .*cifar10-jpeg.tar.gz"):
        load_dataset("cifar10", data_dir=datasets_dir)


def test_unknown_dataset():
    with pytest.raises(UsageError, match="unknown dataset 'fmnist'"):
        load_dataset("fmnist")


def test_folder_of_cifar_jpegs(cifar_jpegs):
    data = load_dataset(f"folder:{cifar_jpegs}")
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert data.train.x.shape == (200, 3, 32, 32) and data.test.x.shape == (50, 3, 32, 32)
    assert torch.bincount(data.train.y).tolist() == [20] * 10
    first = torch.from_numpy(np.array(Image.open(cifar_jpegs / "train" / "airplane" / "0000.jpg").convert("RGB")))
    assert any(torch.equal(image, first.permute(2, 0, 1)) for image in data.train.x[data.train.y == 0])
    assert len(set(data.train.y[:20].tolist())) >= 5  # shuffled once, so --subset takes every class
    assert load_dataset(f"folder:{cifar_jpegs}", image_size=16, channels=1).train.x.shape == (200, 1, 16, 16)


def test_folder_without_train_test_is_split_by_seed(cifar_jpegs, tmp_path):
    for name in ("cat", "dog"):
        shutil.copytree(cifar_jpegs / "train" / name, tmp_path / name)
    a = load_dataset(f"folder:{tmp_path}", seed=1)
    b = load_dataset(f"folder:{tmp_path}", seed=1)
    assert (len(a.train), len(a.test)) == (32, 8)  # 20% of each class
    assert torch.bincount(a.test.y).tolist() == [4, 4]
    assert torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.test.x, load_dataset(f"folder:{tmp_path}", seed=2).test.x)


def test_grayscale_folder_has_one_channel(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), i * 50, np.uint8), "L").save(tmp_path / name / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.input_shape == (1, 8, 8)


def test_unreadable_images_are_named(cifar_jpegs, tmp_path):
    for name in ("cat", "dog"):
        shutil.copytree(cifar_jpegs / "train" / name, tmp_path / name)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"1 of 41 image files cannot be read:\n  .*cat/broken\.jpg"):
        load_dataset(f"folder:{tmp_path}")
    kept = load_dataset(f"folder:{tmp_path}", skip_bad_images=True)
    assert len(kept.train) + len(kept.test) == 40


def test_folder_needs_class_folders(tmp_path):
    with pytest.raises(DataError, match="at least two class sub-folders"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}")


def test_patterns_are_balanced_and_shifted_further():
    data = load_dataset("patterns")
    assert data.input_shape == (3, 28, 28) and data.classes == ["zebra", "checkerboard"]
    assert abs(data.train.y.float().mean().item() - 0.5) < 0.03

    assert torch.equal(load_dataset("patterns").test.x, data.test.x)  # seeded


def test_pattern_positions():
    g = torch.Generator().manual_seed(0)
    centre = (28 - 12) // 2
    near = _offsets(2000, 0, 28 - 12, train_shift=3, shifted=False, g=g)
    far = _offsets(2000, 0, 28 - 12, train_shift=3, shifted=True, g=g)
    assert (near - centre).abs().max() == 3
    assert (far - centre).abs().amax(1).min() == 4
    assert far.min() == 0 and far.max() == 16  # the patch stays inside the 28x28 image


def test_train_val_split_is_seeded_and_disjoint():
    split = Split(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.arange(100))
    fit, val = train_val_split(split, 0.1, seed=3)
    assert (len(fit), len(val)) == (90, 10)
    assert sorted(fit.y.tolist() + val.y.tolist()) == list(range(100))
    assert torch.equal(val.y, train_val_split(split, 0.1, seed=3)[1].y)
    assert not torch.equal(val.y, train_val_split(split, 0.1, seed=4)[1].y)


def test_channel_stats_match_numpy():
    x = torch.randint(0, 256, (50, 3, 7, 5), dtype=torch.uint8)
    x[:, 2] = 77  # a constant channel: std 1, so that normalizing divides by nothing smaller
    mean, std = channel_stats(x)
    ref = x.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std[:2], ref.std(axis=(0, 2, 3))[:2], rtol=1e-12)
    assert std[2] == 1.0 and mean[2] == pytest.approx(77 / 255, rel=1e-12)


def test_resident_batches_are_the_hosts_batches():
    """The GPU path's code (the split kept on the device, batches gathered and augmented there), forced on the
    CPU, gives the host path's batches. On the CPU both tensors are the same memory, so this checks the path
    runs and draws the same; the test below checks the devices meet, where there is a GPU."""
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (50, 3, 6, 6), dtype=torch.uint8, generator=g), torch.arange(50) % 10)
    pre = Preprocess((3, 6, 6), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    host, resident = (BatchLoader(split, 8, pre, shuffle=True, seed=3, augmentation="crop, flip", resident=r)
                      for r in (False, True))
    for epoch in (0, 1):
        host.set_epoch(epoch)
        resident.set_epoch(epoch)
        pairs = list(zip(host, resident, strict=True))
        assert len(pairs) == 7
        for (x1, y1), (x2, y2) in pairs:
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not fits_on(torch.device("cpu"), 1)  # on the CPU the data is in memory already: nothing to copy
    assert BatchLoader(split, 8, pre).x is split.x


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resident_batches_on_a_gpu_equal_the_hosts():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(40) % 10)
    pre = Preprocess((3, 8, 8), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    spec = "crop, flip, rotation(10), jitter(0.2, 0.2, 0.2), grayscale(0.5)"
    host = BatchLoader(split, 8, pre, shuffle=True, seed=3, augmentation=spec, device="cuda", resident=False)
    gpu = BatchLoader(split, 8, pre, shuffle=True, seed=3, augmentation=spec, device="cuda", resident=True)
    assert gpu.x.is_cuda and not host.x.is_cuda
    for (x1, y1), (x2, y2) in zip(host, gpu, strict=True):
        assert x2.is_cuda and torch.equal(y1, y2)
        torch.testing.assert_close(x1, x2, atol=2e-2, rtol=0)  # rotation and jitter: CPU and GPU kernels round apart


def test_normalization_made_under_inference_mode_works_with_gradients():
    pre = Preprocess((1, 2, 2), (0.5,), (0.25,))
    with torch.inference_mode():
        pre.normalize(torch.rand(1, 1, 2, 2))  # the constants are made here first
    x = torch.rand(1, 1, 2, 2, requires_grad=True)
    pre.normalize(x).sum().backward()  # an inference tensor saved for backward would raise here
    assert torch.equal(x.grad, torch.full((1, 1, 2, 2), 4.0))


def test_batch_loader_covers_every_image_once_per_epoch():
    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    loader = BatchLoader(split, 4, Preprocess((1, 1, 1), std=[1 / 255]), shuffle=True, seed=0)
    assert len(loader) == 3
    epoch0 = torch.cat([y for _, y in loader])
    assert sorted(epoch0.tolist()) == list(range(10))
    x, y = next(iter(loader))
    assert torch.allclose(x.view(-1), y.float())  # (x / 255 - 0) / (1 / 255) gives the pixel back
    loader.set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in loader]), epoch0)


def test_adapt_resizes_and_converts_channels():
    data = load_dataset("sample")
    small = adapt(data, image_size=32, channels=3)
    assert small.train.x.shape == (8000, 3, 32, 32)
    assert torch.equal(small.train.x[:, 0], small.train.x[:, 2])


def test_download_goes_through_torchvision_into_the_cache(tmp_path, monkeypatch):
    """--download asks torchvision for the files, then reads them with cnnlab's own IDX reader.

    The network is not reachable here, so torchvision's class is replaced by one that writes the
    files where torchvision puts them (ROOT/FashionMNIST/raw).
    """
    import torchvision.datasets

    asked = []

    class FakeFashionMNIST:
        def __init__(self, root, train, download):
            asked.append((root, train, download))
            raw = tmp_path / "cache" / "cnnlab" / "FashionMNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            prefix = "train" if train else "t10k"
            write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
            write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.array([1, 2, 3], np.uint8))

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    data = load_dataset("fashion-mnist", download=True)
    assert asked == [(str(tmp_path / "cache" / "cnnlab"), True, True), (str(tmp_path / "cache" / "cnnlab"), False, True)]
    assert data.train.y.tolist() == [1, 2, 3]


def test_failed_download_is_explained(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    with pytest.raises(DataError, match=r"downloading mnist into .* failed \(network is unreachable\)"):
        load_dataset("mnist", download=True)


def test_mixed_grayscale_and_colour_folder_is_rgb(tmp_path):
    for name, mode in (("a", "L"), ("b", "RGB")):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new(mode, (8, 8), 100 if mode == "L" else (10, 20, 30)).save(tmp_path / name / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.input_shape == (3, 8, 8)
    gray = data.train.x[data.train.y == 0]
    assert (gray == 100).all()  # grayscale repeated into R, G and B


def test_skip_bad_images_when_the_first_file_is_bad(tmp_path):
    for name in ("cat", "dog"):
        for split in ("train", "test"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(1, 3):
                Image.new("RGB", (6, 6)).save(tmp_path / split / name / f"{i}.png")
    (tmp_path / "train" / "cat" / "0.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="0.png is not an image"):
        load_dataset(f"folder:{tmp_path}")
    assert len(load_dataset(f"folder:{tmp_path}", skip_bad_images=True).train) == 4


def test_large_images_need_an_image_size(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (800, 600)).save(tmp_path / name / f"{i}.jpg")
    with pytest.raises(UsageError, match=r"800x600\); pass --image-size N"):
        load_dataset(f"folder:{tmp_path}")
    assert load_dataset(f"folder:{tmp_path}", image_size=16).input_shape == (3, 16, 16)
    with pytest.raises(UsageError, match="--image-size must be at least 1"):
        load_dataset(f"folder:{tmp_path}", image_size=0)
    with pytest.raises(UsageError, match="--image-size must be at least 1"):
        load_dataset("sample", image_size=-3)


def test_mnist_is_not_read_from_a_fashion_mnist_folder(datasets_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert len(load_dataset("fashion-mnist", data_dir=datasets_dir / "fashion-mnist").train) == 60000
    with pytest.raises(DataError, match="mnist was not found"):
        load_dataset("mnist", data_dir=datasets_dir / "fashion-mnist")


def test_cifar10_in_torchvisions_format(cifar_jpegs, tmp_path, monkeypatch):
    """cifar-10-batches-py read through torchvision: pickled batches of (N, 3072) rows, labels."""
    import pickle

    import torchvision.datasets.cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    jpegs = load_dataset(f"folder:{cifar_jpegs}")
    rows = jpegs.train.x.reshape(len(jpegs.train), -1).numpy()  # (N, 3*32*32), channel-major as CIFAR
    for i in range(1, 6):
        part = slice((i - 1) * 40, i * 40)
        batch = {"data": rows[part], "labels": jpegs.train.y[part].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {"data": jpegs.test.x.reshape(len(jpegs.test), -1).numpy(), "labels": jpegs.test.y.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": jpegs.classes}))
    # These files are not the official ones, so skip torchvision's md5 check of them.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5: True)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert torch.equal(data.train.x, jpegs.train.x) and torch.equal(data.test.y, jpegs.test.y)
    assert data.classes == jpegs.classes and data.source == str(tmp_path)
