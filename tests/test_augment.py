"""Batch augmentation and the loader's sharding across ranks, checked against plain indexing; the
augmentation spec (issue 19): parsing, each item's effect, a draw per image, the old names bit for bit."""

import hashlib
import json
import math
from types import SimpleNamespace

import hypothesis
import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

import cnnlab
from cnnlab.augment_spec import FORMS, parse_augment
from cnnlab.cli.main import build_parser, main
from cnnlab.data import BatchLoader, Split
from cnnlab.data.augment import apply, augment, describe, draw, random_crop, random_flip
from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import UsageError
from cnnlab.report.sections import augmentation_section
from cnnlab.settings import Settings


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


# --- the augmentation spec (issue 19): lecture 002's transforms, each image drawn on its own ---------------

EVERY = "flip, vflip, crop(4), rotation(15), scale(0.2), jitter(0.2, 0.2, 0.2, 0.05), grayscale(0.5)"


def _item(text):
    (item,) = parse_augment(text).items
    return item


def _old_augment(x, name, generator, padding=2):
    """data/augment.py's augment as it was before the spec (a copy): the old names must mean exactly this."""
    if "crop" in name:
        n, c, h, w = x.shape
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if "flip" in name:
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


@pytest.mark.parametrize(("text", "canonical"), [
    ("none", "none"), ("flip", "flip"), ("crop", "crop"), ("crop+flip", "crop, flip"), (" NONE ", "none"),
    ("crop(2), flip(0.5)", "crop, flip"), ("jitter(contrast=0.3)", "jitter(0, 0.3)"),
    ("Rotation(degrees=15.0)", "rotation(15)"), ("grayscale(p=0.1)", "grayscale"), (EVERY, EVERY),
])
def test_a_spec_reads_back_from_its_canonical_text(text, canonical):
    spec = parse_augment(text)
    assert str(spec) == canonical and parse_augment(str(spec)) == spec


def test_a_spec_keeps_its_values_and_order():
    spec = parse_augment("jitter(0.1, hue=0.05), crop(padding=3), rotation(7.5)")
    assert [i.name for i in spec.items] == ["jitter", "crop", "rotation"]
    assert spec.items[0].args == (0.1, 0, 0, 0.05) and spec.items[1]["padding"] == 3 and spec.items[2]["degrees"] == 7.5


@pytest.mark.parametrize(("text", "message"), [
    ("rotate", r"unknown augmentation 'rotate'; did you mean rotation\?"),
    ("flip, rotate(15)", r"unknown augmentation 'rotate'.*\(in 'flip, rotate\(15\)'\)"),
    ("rotation(-5)", r"'rotation\(-5\)': degrees must be above 0 and at most 180, got -5"),
    ("rotation", r"rotation needs its degrees, e.g. rotation\(15\)"),
    ("jitter(2)", r"'jitter\(2\)': brightness must be from 0 to 1, got 2"),
    ("jitter(0.1, hue=0.6)", r"hue must be from 0 to 0.5, got 0.6"),
    ("jitter(0)", "jitter changes nothing with every amount 0"),
    ("scale(1)", "amount must be above 0 and below 1, got 1"),
    ("crop(2.5)", "padding must be a whole number from 1 to 64, got '2.5'"),
    ("flip(0)", "p must be above 0 and at most 1, got 0"),
    ("rotation(nan)", "degrees must be above 0 and at most 180, got nan"),
    ("crop(1, 2)", r"crop takes at most 1 value \(padding\)"),
    ("flip(q=1)", r"flip has no 'q'; write it as flip\(p=0.5\)"),
    ("flip(p=0.2, 0.3)", "a value without a name after a name=value one"),
    ("flip(0.2, p=0.3)", "p is given twice"),
    ("flip,, crop", "has an empty item"),
    ("none, flip", "none stands alone"),
    ("jitter(0.1", r"a '\(' without its '\)'"),
    ("flip)", r"a '\)' without its '\('"),
    ("", "the augmentation is empty"),
])
def test_a_bad_spec_says_what_is_wrong(text, message):
    with pytest.raises(UsageError, match=message):
        parse_augment(text)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.text(alphabet="flipvcrotajrsegyn(),=.0123456789+- ", max_size=40) | st.text(max_size=20))
def test_any_text_is_a_spec_or_a_usage_error(text):
    try:
        spec = parse_augment(text)
    except UsageError:
        return
    assert parse_augment(str(spec)) == spec


def test_an_unknown_item_lists_the_valid_ones():
    with pytest.raises(UsageError) as error:
        parse_augment("blur(3)")
    assert all(form in str(error.value) for form in FORMS) and "rotation(degrees)" in str(error.value)


def test_settings_and_the_cli_take_a_spec(capsys):
    Settings(augment=EVERY).check()
    with pytest.raises(UsageError, match="degrees must be above 0"):
        Settings(augment="flip, rotation(-5)").check()
    args = build_parser().parse_args(["train", "--augment", "flip, rotation(15)"])
    assert args.augment == "flip, rotation(15)"  # free text: the settings check it
    assert main(["train", "--model", "seed-mlp", "--dataset", "sample", "--augment", "flip, rotate(9)"]) == 2
    assert "unknown augmentation 'rotate'; did you mean rotation?" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "digest"), [
    ("none", "30ef3cf87d2f7dc6"), ("flip", "f93996ec36f4e175"), ("crop", "cb3e779d9c86b018"),
    ("crop+flip", "3923ec6c0359f236"), ("crop, flip", "3923ec6c0359f236")])
def test_the_old_names_give_the_old_batches_bit_for_bit(name, digest):
    """Digests of the batches the old code drew (seed 7), and the old code itself over other seeds and shapes:
    run folders that store these names train on as they began."""
    out = augment(_batch(), name, torch.Generator().manual_seed(7))
    assert hashlib.sha256(out.numpy().tobytes()).hexdigest()[:16] == digest
    for seed, shape in [(0, (16, 3, 9, 7)), (11, (33, 1, 28, 28)), (2**40, (5, 3, 32, 32))]:
        x = _batch(*shape)
        old = _old_augment(x, name, torch.Generator().manual_seed(seed))
        assert torch.equal(augment(x, name, torch.Generator().manual_seed(seed)), old)


@pytest.mark.parametrize("text", [str(i) for i in parse_augment(EVERY).items] + [EVERY])
def test_every_item_keeps_shape_and_dtype_and_is_seeded(text):
    x = _batch(n=12, c=3, h=16, w=16)
    a = augment(x, text, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, augment(x, text, torch.Generator().manual_seed(3)))  # the generator decides it all
    assert not torch.equal(a, augment(x, text, torch.Generator().manual_seed(4)))
    assert not torch.equal(a, x)


@pytest.mark.parametrize("text", ["crop(4)", "rotation(15)", "scale(0.2)", "jitter(0.3, 0.3, 0.3, 0.1)",
                                  "flip", "vflip", "grayscale(0.5)"])
def test_each_image_draws_its_own_parameters(text):
    """v2 called on a whole batch draws once for all of it; here 16 copies of one image come out different."""
    x = _batch(n=1, h=16, w=16).expand(16, -1, -1, -1)  # (16, 3, 16, 16): one image, 16 times
    out = augment(x, text, torch.Generator().manual_seed(0))
    assert len({o.numpy().tobytes() for o in out}) > 1
    params = draw(_item(text), 16, torch.Generator().manual_seed(0))
    assert len({p.numpy().tobytes() for p in params}) > 1


def test_augmentation_leaves_the_global_random_state_alone():
    """Every draw comes from the loader's generator (v2's own transforms would use the global one)."""
    state = torch.random.get_rng_state()
    augment(_batch(), EVERY, torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_rotation_turns_by_the_drawn_angle():
    item = _item("rotation(90)")
    x = _batch(n=4, h=8, w=8)
    assert torch.equal(apply(x, item, torch.full((4,), 90.0, dtype=torch.float64)), x.rot90(1, (-2, -1)))
    assert torch.equal(apply(x, item, torch.zeros(4, dtype=torch.float64)), x)
    angles = draw(_item("rotation(15)"), 1000, torch.Generator().manual_seed(0))
    assert angles.abs().max() <= 15 and angles.min() < -14 and angles.max() > 14
    mixed = torch.tensor([30.0, -20.0, 5.0, 0.0], dtype=torch.float64)
    want = torch.stack([TF.rotate(i, float(a), interpolation=TF.InterpolationMode.BILINEAR) for i, a in zip(x, mixed)])
    assert torch.equal(apply(x, item, mixed), want)  # v2.functional, image by image
    assert describe(item, mixed[0]) == "+30.0°"


def test_scale_resizes_about_the_centre_and_keeps_the_size():
    item, x = _item("scale(0.5)"), torch.full((2, 1, 8, 8), 200, dtype=torch.uint8)
    out = apply(x, item, torch.tensor([0.5, 1.5], dtype=torch.float64))
    assert out.shape == x.shape
    assert bool((out[0, 0, 2:6, 2:6] == 200).all()) and int(out[0].sum()) == 16 * 200  # shrunk, 0 around
    assert bool((out[1] == 200).all())  # enlarged: the centre fills the image
    factors = draw(_item("scale(0.2)"), 1000, torch.Generator().manual_seed(0))
    assert 0.8 <= factors.min() < 0.81 and 1.19 < factors.max() <= 1.2


def test_vflip_is_exact():
    x = _batch(n=200)
    out = augment(x, "vflip", torch.Generator().manual_seed(0))
    flipped = sum(torch.equal(o, i.flip(-2)) and not torch.equal(o, i) for o, i in zip(out, x))
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(-2)) for o, i in zip(out, x)) and 70 < flipped < 130


def test_grayscale_gives_equal_channels():
    x = _batch(n=200)
    out = augment(x, "grayscale(0.5)", torch.Generator().manual_seed(0))
    grey = torch.tensor([bool((o[0] == o[1]).all() and (o[1] == o[2]).all()) for o in out])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((grey ^ kept).all()) and 70 < int(grey.sum()) < 130
    assert torch.equal(out[grey], TF.rgb_to_grayscale(x[grey], num_output_channels=3))
    one = _batch(c=1)
    assert torch.equal(augment(one, "grayscale(1)", torch.Generator()), one)  # nothing to take away


def test_jitter_draws_within_its_bounds():
    params = draw(_item("jitter(0.2, 0.3, 0.4, 0.1)"), 2000, torch.Generator().manual_seed(0))  # (N, 2, 4)
    low, high = params[:, 0].min(0).values, params[:, 0].max(0).values
    assert torch.all(low >= torch.tensor([0.8, 0.7, 0.6, -0.1], dtype=torch.float64))
    assert torch.all(high <= torch.tensor([1.2, 1.3, 1.4, 0.1], dtype=torch.float64))
    assert torch.equal(params[:, 1].sort(1).values, torch.arange(4.0, dtype=torch.float64).expand(2000, 4))
    assert len({tuple(o) for o in params[:, 1].tolist()}) == 24  # every order of the four steps occurs
    x = torch.full((500, 3, 4, 4), 100, dtype=torch.uint8)
    out = augment(x, "jitter(0.5)", torch.Generator().manual_seed(0))  # brightness alone: 100 times [0.5, 1.5]
    assert int(out.min()) >= 50 and int(out.max()) <= 150 and len(out.unique()) > 50
    assert bool((out == out[:, :1, :1, :1]).all())  # one factor per image, every pixel alike


def test_a_spec_survives_ranks_and_resume():
    spec, split = "flip, rotation(10), jitter(0.2, 0.2)", Split(_batch(n=36), torch.arange(36))
    kwargs = dict(batch_size=8, preprocess=PLAIN, shuffle=True, seed=5, augmentation=spec)
    one = list(BatchLoader(split, **kwargs))
    shards = [list(BatchLoader(split, **kwargs, rank=r, world_size=2)) for r in range(2)]
    assert all(torch.equal(torch.cat([shards[0][s][0], shards[1][s][0]]), x) for s, (x, _) in enumerate(one))
    later = BatchLoader(split, **kwargs)
    later.set_epoch(0, start_step=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(list(later), one[2:]))


def _findings(x, augment_text, classes=("a", "b", "c", "d")):
    """What augmentation_section reads of a run's Findings."""
    labels = torch.arange(len(x)) % len(classes)
    train = SimpleNamespace(augment=augment_text, seed=0)
    return SimpleNamespace(data=SimpleNamespace(train=Split(x, labels)),
                           run=SimpleNamespace(config=SimpleNamespace(train=train), classes=list(classes)))


def test_the_report_shows_each_item_with_each_images_draw():
    page = augmentation_section(_findings(_batch(n=8, h=16, w=16), "crop, flip, rotation(20)"))
    assert "as this run trained (--augment crop, flip, rotation(20))" in page
    for row in ("crop, draw 1", "flip, draw 2", "rotation(20), draw 1", "the whole spec, draw 2"):
        assert f"<h4>{row}</h4>" in page
    assert page.count("°</figcaption>") == 16 and "shift x " in page
    demo = augmentation_section(_findings(_batch(n=8, h=16, w=16), "none"))
    assert "trained without augmentation" in demo and "grayscale(0.5), draw 1" in demo and "whole spec" not in demo
    grey = augmentation_section(_findings(_batch(n=8, c=1, h=16, w=16), "none"))
    assert "jitter(0.4, 0.4), draw 1" in grey and "grayscale" not in grey


@pytest.mark.slow
def test_training_with_a_spec_is_reproducible(tmp_path):
    kwargs = dict(subset=300, epochs=1, batch_size=50, augment=EVERY, verbose=False, report=False)
    a = cnnlab.train("seed-cnn", "sample", out=tmp_path / "a", **kwargs)
    b = cnnlab.train("seed-cnn", "sample", out=tmp_path / "b", **kwargs)
    assert json.loads((a.path / "config.json").read_text())["train"]["augment"] == EVERY
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(a.history) == strip(b.history) and math.isfinite(a.history[-1]["train_loss"])
