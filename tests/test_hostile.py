"""Bad input of every kind gets a clear error: exit status 2, a message starting "error:", no traceback,
nothing half written. Random flag values and random file contents (hypothesis), and each known case."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from PIL import Image

import cnnlab
from cnnlab.cli.main import main
from cnnlab.data.folder import load_folder
from cnnlab.data.idx import read_idx, read_idx_pair
from cnnlab.errors import DataError, Error, RunError
from cnnlab.runs.folder import load_checkpoint, open_run

SPEC = "conv(4,3) relu maxpool(2) flatten linear(10)"
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN trained for one epoch on 200 images of the shipped sample."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    cnnlab.train(SPEC, "sample", subset=200, epochs=1, out=out, verbose=False, report=False)
    return out


@pytest.fixture(scope="session")
def small_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "small.png"
    Image.fromarray((np.arange(16 * 16 * 3) % 256).astype(np.uint8).reshape(16, 16, 3)).save(path)
    return path


def cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """Run the command in this process: (exit status, stdout, stderr). An exception escaping is a bug."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refusing a flag
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(result: tuple[int, str, str]) -> None:
    """Exit 0, or 2 with a message that starts with "error:" (ours) or argparse's "PROG: error:"; never a traceback."""
    code, _, err = result
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.startswith("error: ") or (err.startswith("usage: ") and ": error: " in err), err


def assert_error(result: tuple[int, str, str], *words: str) -> str:
    code, _, err = result
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


# --------------------------------------------------------------------------- random values (hypothesis)

# Text as a command line can carry it: anything but NUL, and the bytes of a non-UTF-8 name as Linux decodes them.
TEXT = st.one_of(st.text(st.characters(blacklist_characters="\x00"), max_size=20),
                 st.binary(max_size=12).filter(lambda b: b"\x00" not in b).map(os.fsdecode))
INTS = st.one_of(st.integers(-3, 5), st.sampled_from([-(2**63), 2**31, 2**63, 10**20]), st.integers())
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
NUMBER = st.one_of(INTS.map(str), FLOATS.map(repr), TEXT)  # what a numeric flag may be given
MATRIX = st.one_of(st.lists(st.lists(st.sampled_from(["1", "-2", "0.5", "nan", "1e308", "x", ""]), max_size=4),
                            max_size=4).map(lambda rows: "; ".join(" ".join(r) for r in rows)), TEXT)


@FAST
@given(question=st.sampled_from(["size", "padding", "pool"]), a=INTS, b=INTS, c=INTS, d=INTS)
def test_arith_random_numbers(capsys, question, a, b, c, d):
    argv = {"size": ["size", a, "--kernel", b, "--stride", c, "--padding", d],
            "padding": ["padding", "--kernel", a, "--stride", b, "--dilation", c, "--size", d],
            "pool": ["pool", "--factor", a, "--size", b]}[question]
    assert_clean(cli(capsys, "arith", *argv))


@FAST
@given(spec=st.one_of(TEXT, st.sampled_from(["conv(10,3)", "maxpool(0)", "conv(-1,3)", "linear(10)"])), shape=TEXT)
def test_arith_shape_random_text(capsys, spec, shape):
    assert_clean(cli(capsys, "arith", "shape", spec, "--input", shape))


@FAST
@given(matrix=MATRIX, kernel=MATRIX, stride=NUMBER, padding=NUMBER, dilation=NUMBER, limit=NUMBER, grad=MATRIX)
def test_conv_random_flags(capsys, matrix, kernel, stride, padding, dilation, limit, grad):
    assert_clean(cli(capsys, "conv", "--input", matrix, "--kernel", kernel, "--stride", stride, "--padding", padding,
                     "--dilation", dilation, "--limit", limit, "--grad", grad))


@FAST
@given(size=NUMBER, stride=NUMBER, padding=NUMBER, chain=TEXT, avg=st.booleans())
def test_pool_and_chain_random_flags(capsys, size, stride, padding, chain, avg):
    matrix = "1 2 3 4; 5 6 7 8; 9 10 11 12; 13 14 15 16"
    assert_clean(cli(capsys, "pool", "--input", matrix, "--size", size, "--stride", stride, "--padding", padding,
                     *(["--avg"] if avg else []), "--grad", "ones"))
    assert_clean(cli(capsys, "conv", "--input", matrix, "--kernel", "1 0; 0 1", "--chain", chain))


@FAST
@given(kernel=st.one_of(MATRIX, st.sampled_from(["gaussian:0", "box:-3", "box:999", "sobel-x", "1e300"])),
       stride=NUMBER, edge=st.sampled_from(["zero", "extend", "reflect", "wrap", "crop"]), out=TEXT)
def test_filter_random_flags(capsys, tmp_path, small_png, kernel, stride, edge, out):
    assert_clean(cli(capsys, "filter", small_png, "--kernel", kernel, "--stride", stride, "--edge", edge,
                     "--out", tmp_path / "out.png"))
    assert_clean(cli(capsys, "filter", small_png, "--out", tmp_path / f"{out}.png"))


@FAST
@given(model=st.one_of(TEXT.filter(lambda t: ":" not in t),  # no `module:attr`: random text must not import code
                       st.sampled_from(["largenet", "conv(8,3) flatten linear(10)", "linear(10)"])),
       shape=st.one_of(TEXT, st.sampled_from(["1x28x28", "3x32x32", "0x1x1", "784"])),
       classes=NUMBER, depth=NUMBER, batch=NUMBER)
def test_summary_random_flags(capsys, model, shape, classes, depth, batch):
    assert_clean(cli(capsys, "summary", model, "--input", shape, "--classes", classes, "--depth", depth,
                     "--batch-size", batch))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["predict", "featuremaps", "filters", "cam"]), number=NUMBER, text=TEXT)
def test_run_commands_random_flags(capsys, tmp_path, tiny_run, small_png, command, number, text):
    argv = {"predict": ["predict", tiny_run, small_png, "--top-k", number],
            "featuremaps": ["featuremaps", tiny_run, small_png, "--channels", number, "--layer", text,
                            "--out", tmp_path / "maps"],
            "filters": ["filters", tiny_run, "--layer", text, "--out", tmp_path / f"{text}.png"],
            "cam": ["cam", tiny_run, small_png, "--class", text, "--out", tmp_path / "cam.png"]}[command]
    assert_clean(cli(capsys, *argv))


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(split=TEXT, data_dir=TEXT)
def test_listing_and_evaluate_random_flags(capsys, tiny_run, split, data_dir):
    assert_clean(cli(capsys, "evaluate", tiny_run, "--split", split, "--format", "json"))
    assert_clean(cli(capsys, "datasets", "--data-dir", data_dir))


# A PNG cut anywhere, random bytes, or nothing: every file cnnlab reads.
PNG = (Path(cnnlab.__file__).parent / "data" / "sample" / "chelsea.jpg").read_bytes()
BYTES = st.one_of(st.binary(max_size=300), st.integers(0, len(PNG)).map(lambda n: PNG[:n]))


TRAIN_FLAGS = ["--epochs", "--batch-size", "--lr", "--momentum", "--weight-decay", "--warmup", "--label-smoothing",
               "--val-fraction", "--subset", "--seed", "--patience", "--checkpoint-steps", "--checkpoint-seconds"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(TRAIN_FLAGS), value=NUMBER)
def test_train_random_flag_values(capsys, tmp_path, flag, value):
    """One training flag at a time gets any value; a value that is valid trains a tiny model on 40 images."""
    if flag == "--epochs":  # a valid huge number of epochs would train for ever: only its refusals here
        try:
            assume(float(value) <= 2)
        except ValueError:
            pass
    out = Path(tempfile.mkdtemp(dir=tmp_path)) / "run"  # hypothesis runs every example in one tmp_path
    result = cli(capsys, "train", "--model", "flatten linear(10)", "--subset", 40, "--epochs", 1, flag, value,
                 "--out", out, "--no-report", "--quiet")
    assert_clean(result)
    if result[0] == 2 and not result[2].startswith("usage: ") and "training diverged" not in result[2]:
        assert not out.exists(), "a refused run must write nothing"  # a diverged one keeps what it saved


def test_subset_larger_than_the_dataset_is_said(capsys, tmp_path):
    assert_error(cli(capsys, "train", "--subset", 999_999, "--out", tmp_path / "run", "--quiet"),
                 "--subset 999,999 is more than the 8,000 training images of sample")
    assert not (tmp_path / "run").exists()


@FAST
@given(data=BYTES)
def test_random_image_bytes(capsys, tmp_path, tiny_run, data):
    path = tmp_path / "image.png"
    path.write_bytes(data)
    assert_clean(cli(capsys, "predict", tiny_run, path))
    assert_clean(cli(capsys, "filter", path, "--out", tmp_path / "f.png"))


@FAST
@given(data=st.binary(max_size=200))
def test_random_csv_matrix_bytes(capsys, tmp_path, data):
    path = tmp_path / "a.csv"
    path.write_bytes(data)
    assert_clean(cli(capsys, "conv", "--input", path, "--kernel", "1"))


@FAST
@given(dims=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4), body=st.binary(max_size=64),
       code=st.sampled_from([0x08, 0x09, 0x0D, 0x42]))
def test_random_idx_headers(tmp_path, dims, body, code):
    path = tmp_path / "x-idx"
    path.write_bytes(struct.pack(">I", (code << 8) | len(dims)) + struct.pack(f">{len(dims)}I", *dims) + body)
    labels = tmp_path / "labels"
    labels.write_bytes(struct.pack(">II", 0x0801, 1) + b"\x01")
    try:
        read_idx(path)
        read_idx_pair(path, labels, 10)
    except DataError:
        pass


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    if run.exists():
        shutil.rmtree(run)
    return Path(shutil.copytree(tiny_run, run))


def _run_whose_config_holds(tiny_run: Path, tmp_path: Path, field: tuple[str, ...], value: object) -> Path:
    """A copy of the tiny run whose config.json has `value` at the nested `field`."""
    run = _copy_run(tiny_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    *parents, key = field
    target = config
    for p in parents:
        target = target[p]
    target[key] = value
    (run / "config.json").write_text(json.dumps(config))
    return run


JSON = st.recursive(st.none() | st.booleans() | st.integers() | FLOATS | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)
CONFIG_FIELDS = [("model",), ("parameters",), ("data",), ("train",), ("data", "classes"), ("data", "input_shape"),
                 ("data", "mean"), ("data", "std"), ("data", "dataset"), ("data", "test_images"), ("train", "tta"),
                 ("train", "channels_last"), ("train", "epochs"), ("train", "lr"), ("train", "augment")]


@FAST
@given(field=st.sampled_from(CONFIG_FIELDS), value=JSON)
def test_random_config_values(capsys, tmp_path, tiny_run, small_png, field, value):
    run = _run_whose_config_holds(tiny_run, tmp_path, field, value)
    assert_clean(cli(capsys, "predict", run, small_png))


@FAST
@given(name=st.sampled_from(["config.json", "metrics.json", "history.csv", "model.safetensors"]), data=BYTES)
def test_random_run_file_bytes(capsys, tmp_path, tiny_run, small_png, name, data):
    run = _copy_run(tiny_run, tmp_path)
    (run / name).write_bytes(data)
    assert_clean(cli(capsys, "predict", run, small_png))


@FAST
@given(data=BYTES)
def test_random_checkpoint_bytes(tmp_path, data):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(data)
    with pytest.raises(RunError):
        load_checkpoint(path)


# --------------------------------------------------------------------------------- each known case

def test_idx_header_whose_dimensions_overflow_int64(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">IIII", 2051, 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(16))
    with pytest.raises(DataError, match=r"truncated: its header promises 4294967295 x 4294967295 x 4294967295 values"):
        read_idx(path)


def test_idx_file_with_no_images(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.write_bytes(struct.pack(">IIII", 2051, 0, 28, 28))
    labels.write_bytes(struct.pack(">II", 2049, 0))
    with pytest.raises(DataError, match=r"holds no images \(its header says 0 x 28 x 28\)"):
        read_idx_pair(images, labels, 10)


def test_idx_gzip_that_inflates_past_the_cap(tmp_path, monkeypatch):
    import gzip

    monkeypatch.setattr("cnnlab.data.idx.MAX_BYTES", 10**6)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes(5 * 10**6)))  # 5 kB that inflate to 5 MB
    with pytest.raises(DataError, match="inflates to more than"):
        read_idx(path)


def _folder(root: Path, classes: dict[bytes, int]) -> Path:
    """A class-per-folder tree under root, names given as bytes (they may not be UTF-8): 8x8 images."""
    for i, (name, count) in enumerate(classes.items()):
        folder = os.path.join(os.fsencode(root), name)
        os.makedirs(folder)
        for j in range(count):
            pixels = np.full((8, 8, 3), 40 * i + j, dtype=np.uint8)
            Image.fromarray(pixels).save(os.fsdecode(os.path.join(folder, b"img\xff%d.png" % j)))
    return root


def test_class_folder_without_images_is_named(tmp_path):
    root = _folder(tmp_path / "data", {b"cat": 3, b"dog": 3})
    (root / "bird").mkdir()
    (root / "bird" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"the class folder .*bird holds no image files \(.jpg, .jpeg, .png"):
        load_folder(root)


def test_class_whose_images_are_all_skipped(tmp_path):
    root = _folder(tmp_path / "data", {b"cat": 3, b"dog": 3})
    (root / "bird").mkdir()
    (root / "bird" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"the classes bird of .* have no readable training images"):
        load_folder(root, skip_bad=True)


def test_folder_names_differing_only_in_undecodable_bytes(tmp_path):
    root = _folder(tmp_path / "data", {b"a\xfe": 2, b"a\xff": 2})
    with pytest.raises(DataError, match="differ only in bytes that are not UTF-8 and would both be class 'a\ufffd'"):
        load_folder(root)


def test_non_utf8_and_markup_names_train_report_and_show(capsys, tmp_path):
    """Class and file names that are not UTF-8, or look like markup, reach config.json, tables, figures and
    the report as printable text; the data folder's own path keeps its bytes, so it can be read again."""
    root = _folder(Path(os.fsdecode(os.fsencode(tmp_path) + b"/d\xe9ta")), {b"cl\xffa": 4, b"[bold] $y$": 4, b"ok": 4})
    run = tmp_path / "run"
    cnnlab.train("conv(2,3) relu flatten linear(3)", f"folder:{root}", epochs=1, out=run, verbose=False)
    config = json.loads((run / "config.json").read_bytes().decode("utf-8"))
    assert config["data"]["classes"] == ["[bold] $y$", "cl\ufffda", "ok"]
    assert config["data"]["dataset"] == f"folder:{root}"  # the real path, escaped in JSON, read back exactly
    assert "cl\ufffda" in (run / "report.html").read_text(encoding="utf-8")
    image = os.fsdecode(os.fsencode(root) + b"/cl\xffa/img\xff0.png")
    code, out, err = cli(capsys, "evaluate", run)
    assert code == 0 and "cl\ufffda" in out and "[bold] $y$" in out, err  # a name, not rich markup
    code, out, err = cli(capsys, "predict", run, image)
    assert code == 0 and "img\\udcff0.png" in out, err  # a path is printed with its undecodable bytes escaped
    assert cli(capsys, "cam", run, image, "--out", tmp_path / "cam.png")[0] == 0
    assert cli(capsys, "featuremaps", run, image, "--out", tmp_path / "maps")[0] == 0


@pytest.mark.parametrize(
    ("field", "value", "found", "expected"),
    [
        (("model",), 5, "a whole number 5", "text"),
        (("data",), "x", 'text "x"', "an object"),
        (("data", "classes"), [0, 1], "a list [0, 1]", "a list of 2 or more different class names"),
        (("data", "input_shape"), "1x28x28", 'text "1x28x28"', "a list"),
        (("data", "input_shape"), [1, -28, 28], "a list [1, -28, 28]", "[channels, height, width]"),
        (("data", "std"), [0], "a list [0]", "1 positive number(s), one per input channel"),
        (("data", "test_images"), None, "null", "a whole number"),
        (("train", "tta"), "yes", 'text "yes"', "true or false"),
        (("train", "lr"), [1], "a list [1]", "a number"),
    ],
)
def test_config_field_of_the_wrong_type(capsys, tmp_path, tiny_run, small_png, field, value, found, expected):
    run = _run_whose_config_holds(tiny_run, tmp_path, field, value)
    err = assert_error(cli(capsys, "predict", run, small_png), f"{run / 'config.json'}: the field '{'.'.join(field)}'",
                       f"holds {found}, but cnnlab expects {expected}")
    assert "put back the value cnnlab wrote, or train the run again" in err


def test_config_settings_that_fail_the_checks(capsys, tmp_path, tiny_run, small_png):
    run = _run_whose_config_holds(tiny_run, tmp_path, ("train", "epochs"), 0)
    assert_error(cli(capsys, "filters", run, "--out", tmp_path / "f.png"), "config.json: the training settings",
                 "--epochs and --batch-size must be at least 1")
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("history.csv", "epoch,seconds\n1.5,2\n", "history.csv is damaged (line 2 needs a whole epoch of 1 or more"),
        ("history.csv", b"\xff\xfe", "history.csv is damaged ('utf-8' codec can't decode"),
        ("metrics.json", '{"best_epoch": "x"}', "metrics.json: the field 'best_epoch' holds text \"x\", but cnnlab "
                                                 "expects a whole number or null"),
        ("metrics.json", "[" * 100_000, "metrics.json is not valid JSON (maximum recursion depth"),
        ("config.json", "", "config.json is not valid JSON (Expecting value"),
    ],
)
def test_damaged_history_metrics_and_config(capsys, tmp_path, tiny_run, name, content, message):
    run = _copy_run(tiny_run, tmp_path)
    (run / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_error(cli(capsys, "filters", run, "--out", tmp_path / "f.png"), message)


class _Payload:
    """Unpickling this would create a file: what a malicious checkpoint could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_checkpoint_never_unpickles_code(tmp_path, tiny_run):
    run = _copy_run(tiny_run, tmp_path)
    payload = tmp_path / "payload-ran"
    torch.save({"model": _Payload(payload)}, run / "checkpoint.pt")
    with pytest.raises(RunError) as caught:
        cnnlab.resume(run, verbose=False, report=False)
    assert not payload.exists()
    assert "holds Python objects other than tensors, numbers and text (cnnlab never runs code" in str(caught.value)
    assert "weights_only" not in str(caught.value)


@pytest.mark.parametrize(
    ("state", "message"),
    [([1, 2], "holds a list, not the state cnnlab saves"),
     ({"epoch": 1}, r"lacks a valid 'model' \(found NoneType\)"),
     ({"model": {}, "optimizer": {}, "rng": torch.zeros(1), "epoch": -1, "best_val_loss": 1.0, "best_epoch": 0,
       "bad_epochs": 0}, "impossible weights or epoch counts")],
)
def test_checkpoint_of_the_wrong_shape(tmp_path, state, message):
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(RunError, match=message):
        load_checkpoint(tmp_path / "checkpoint.pt")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong shapes"])
def test_damaged_weights(capsys, tmp_path, tiny_run, small_png, damage):
    run = _copy_run(tiny_run, tmp_path)
    weights = run / "model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"garbage")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:300])
    else:
        from safetensors.torch import save_file

        save_file({k: torch.zeros(2, 2) for k in torch.load(run / "checkpoint.pt", weights_only=True)["model"]}, weights)
    err = assert_error(cli(capsys, "predict", run, small_png), str(weights), "does not fit model")
    assert "weights_only" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["arith", "pool", "--factor", "2", "--size", "-5"], "--size -5: an input is 1 pixel or more"),
        (["arith", "padding", "--kernel", "3", "--size", "0"], "kernel, stride, dilation and size must be 1 or more"),
        (["pool", "--input", "1 2; 3 4", "--size", "-1"], "--size must be from 1 to 10,000, not -1"),
        (["pool", "--input", "1 2; 3 4", "--stride", "0"], "--stride must be from 1 to 10,000, not 0"),
        (["conv", "--input", "1 2; 3 4", "--kernel", "1", "--padding", "-2"], "--padding must be from 0 to 1,000, not -2"),
        (["conv", "--input", "1 2; 3 4", "--kernel", "1", "--dilation", str(10**20)], "--dilation must be from 1 to 10,000"),
        (["conv", "--input", "1 2; 3 4", "--kernel", "1", "--limit", "-1"], "--limit must be from 0 to"),
        (["conv", "--input", "1 2; 3 4", "--chain", "maxpool(-2)"], "maxpool: kernel must be from 1 to 10,000, not -2"),
        (["filter", "--kernel", "1e308 1e308; 1e308 1e308"], "the kernel's weights are too large"),
        (["filter", "--kernel", "gaussian:-1"], "gaussian:-1: the size must be 1 to 255"),
        (["filter", "--stride", "0"], "the stride must be from 1 to 10,000, not 0"),
        (["summary", "seed-cnn", "--depth", "-1"], "--depth -1: give 0"),
        (["summary", "seed-cnn", "--batch-size", str(10**20)], "--batch-size must be from 1 to 1,000,000"),
    ],
)
def test_impossible_teaching_and_summary_flags(capsys, argv, message):
    assert_error(cli(capsys, *argv), message)


def test_impossible_view_flags(capsys, tmp_path, tiny_run, small_png):
    assert_error(cli(capsys, "predict", tiny_run, small_png, "--top-k", "0"), "--top-k 0: show 1 or more classes")
    assert_error(cli(capsys, "filters", tiny_run, "--out", tmp_path / "f.jpg"), "figures are written as PNG files")
    assert_error(cli(capsys, "cam", tiny_run, small_png, "--out", tmp_path), "figures are written as PNG files")
    assert_error(cli(capsys, "featuremaps", tiny_run, small_png, "--channels", "0"), "--channels 0")
    assert list(tmp_path.iterdir()) == []  # nothing half written
