"""Batch augmentation and the loader's sharding across ranks, checked against plain indexing."""

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data import BatchLoader, Split
from cnnlab.data.augment import augment, random_crop, random_flip
from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import UsageError


PLAIN = Preprocess((3, 9, 7))  # only / 255


def _batch(n=16, c=3, h=9, w=7):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_random_crop_is_a_shift_of_the_padded_image():
    x = _batch()
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(len(x)):  # each image equals exactly one window of its padded self
        windows = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(out[i], padded[i, :, dy : dy + 9, dx : dx + 7])]
        assert windows, f"image {i} is not a crop of its padded original"


def test_random_crop_draws_different_offsets_per_image():
    x = torch.full((64, 1, 9, 9), 200, dtype=torch.uint8)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    zero_rows = (out == 0).flatten(1).sum(1)  # how much padding came in differs between images
    assert len(set(zero_rows.tolist())) > 3


def test_random_flip_mirrors_about_half():
    x = _batch(n=200)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) and not torch.equal(o, i) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped | kept).all())
    assert 70 < int(flipped.sum()) < 130


def test_augment_none_is_identity_and_seeded():
    x = _batch()
    assert torch.equal(augment(x, "none", torch.Generator()), x)
    a = augment(x, "crop+flip", torch.Generator().manual_seed(3))
    b = augment(x, "crop+flip", torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_unknown_augmentation_is_a_clear_error():
    split = Split(_batch(), torch.zeros(16, dtype=torch.int64))
    with pytest.raises(UsageError, match="unknown augmentation 'rotate'"):
        BatchLoader(split, 4, PLAIN, augmentation="rotate")


@pytest.mark.parametrize("augmentation", ["none", "crop+flip"])
@pytest.mark.parametrize("n", [37, 36])
def test_ranks_together_see_the_single_process_batches(n, augmentation):
    split = Split(_batch(n=n), torch.arange(n))
    kwargs = dict(batch_size=8, preprocess=PLAIN, shuffle=True, seed=5, augmentation=augmentation)
    one = list(BatchLoader(split, **kwargs))
    shards = [list(BatchLoader(split, **kwargs, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(one) == -(-n // 8)
    for step, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([shards[0][step][0], shards[1][step][0]]), x)
        assert torch.equal(torch.cat([shards[0][step][1], shards[1][step][1]]), y)


def test_a_last_batch_too_small_for_every_rank_is_dropped():
    split = Split(_batch(n=33), torch.arange(33))  # 4 batches of 8 and one of 1
    loader = BatchLoader(split, 8, PLAIN, rank=1, world_size=2)
    assert len(loader) == 4 and len(list(loader)) == 4
    assert len(BatchLoader(split, 8, PLAIN)) == 5


def test_batch_size_must_split_over_ranks():
    split = Split(_batch(), torch.zeros(16, dtype=torch.int64))
    with pytest.raises(UsageError, match="multiple of 2"):
        BatchLoader(split, 7, PLAIN, rank=0, world_size=2)


def test_channels_last_layout():
    split = Split(_batch(), torch.zeros(16, dtype=torch.int64))
    x, _ = next(iter(BatchLoader(split, 4, Preprocess((3, 9, 7), channels_last=True))))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def test_rank_must_be_one_of_the_processes():
    split = Split(_batch(), torch.zeros(16, dtype=torch.int64))
    with pytest.raises(UsageError, match="rank 2 is not one of the 2 processes"):
        BatchLoader(split, 8, PLAIN, rank=2, world_size=2)
