"""Evaluation and prediction from a run folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab
from cnnlab.data import BatchLoader, load_dataset
from cnnlab.errors import ImageError, RunError, UsageError
from cnnlab.inspect.evaluate import collect_logits
from cnnlab.runs.trained import FlipAverage, judged


def test_evaluate_matches_metrics_and_own_count(trained_run):
    ev = cnnlab.evaluate(trained_run.path)
    assert ev.accuracy == pytest.approx(trained_run.metrics["test_accuracy"])
    data = load_dataset("sample")
    logits, labels = collect_logits(trained_run.build_model(), BatchLoader(data.test, 64, trained_run.preprocess))
    predicted = logits.argmax(1)
    assert ev.accuracy == pytest.approx((predicted == labels).float().mean().item())
    for k in range(10):
        in_class = labels == k
        assert ev.per_class_accuracy[k] == pytest.approx((predicted[in_class] == k).float().mean().item())
        assert ev.confusion[k][3] == int(((labels == k) & (predicted == 3)).sum())


def test_evaluate_other_splits(trained_run):
    assert cnnlab.evaluate(trained_run, split="train").count == 8000
    with pytest.raises(UsageError, match="no split 'test-shifted'"):
        cnnlab.evaluate(trained_run, split="test-shifted")


def _test_image(index: int) -> tuple[np.ndarray, int]:
    data = load_dataset("sample")
    return data.test.x[index, 0].numpy(), int(data.test.y[index])


def test_predict_png_with_alpha_gives_the_same_answer_as_evaluation(trained_run, tmp_path):
    pixels, label = _test_image(0)
    alpha = np.where(pixels > 0, 255, 0).astype(np.uint8)  # the background fully transparent
    rgba = np.stack([pixels, pixels, pixels, alpha], axis=2)
    path = tmp_path / "item.png"
    Image.fromarray(rgba, "RGBA").save(path)
    (pred,) = cnnlab.predict(trained_run, [path], topk=10)
    probabilities = [p for _, p in pred.top]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1)

    model = trained_run.build_model()
    x = (torch.from_numpy(pixels).float() / 255 - trained_run.preprocess.mean[0]) / trained_run.preprocess.std[0]
    expected = model(x.view(1, 1, 28, 28)).softmax(1)[0]
    assert pred.top[0][0] == trained_run.classes[int(expected.argmax())]
    assert pred.top[0][1] == pytest.approx(expected.max().item(), abs=1e-5)


def test_predict_large_grayscale_jpeg(trained_run, tmp_path):
    """A 280x280 grayscale JPEG of a test trouser is resized to 28x28 and still recognised."""
    data = load_dataset("sample")
    index = int((data.test.y == 1).nonzero()[0])  # a trouser: the easiest class
    big = Image.fromarray(data.test.x[index, 0].numpy(), "L").resize((280, 280), Image.Resampling.BICUBIC)
    big.save(tmp_path / "trouser.jpg", quality=95)
    (pred,) = cnnlab.predict(trained_run, [tmp_path / "trouser.jpg"], topk=1)
    assert pred.top[0][0] == "Trouser"


def test_predict_inverts_dark_on_light(trained_run, tmp_path):
    pixels, _ = _test_image(1)
    Image.fromarray(255 - pixels, "L").save(tmp_path / "negative.png")
    Image.fromarray(pixels, "L").save(tmp_path / "positive.png")
    (plain,) = cnnlab.predict(trained_run, [tmp_path / "positive.png"])
    (inverted,) = cnnlab.predict(trained_run, [tmp_path / "negative.png"], invert=True)
    assert inverted.top[0][0] == plain.top[0][0]
    assert inverted.top[0][1] == pytest.approx(plain.top[0][1], abs=1e-5)


def test_predict_bad_file_is_named(trained_run, tmp_path):
    (tmp_path / "x.png").write_text("no")
    with pytest.raises(ImageError, match="x.png is not an image"):
        cnnlab.predict(trained_run, [tmp_path / "x.png"])


def test_missing_or_damaged_run(tmp_path):
    with pytest.raises(RunError, match="is not a run folder"):
        cnnlab.evaluate(tmp_path / "none")
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(RunError, match="not valid JSON"):
        cnnlab.open_run(tmp_path)


def test_flip_average_is_the_mean_of_the_two_probabilities():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 5 * 6, 4))
    x = torch.randn(3, 2, 5, 6)
    expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2  # (3, 4)
    torch.testing.assert_close(FlipAverage(model)(x).exp(), expected, atol=1e-6, rtol=1e-5)
    assert judged(model, tta=False) is model


def test_judged_keeps_the_models_mode():
    """A model in eval mode stays so under TTA: a fresh wrapper must not put batch norm back in training."""
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(1)).eval()
    wrapped = judged(model, tta=True)
    assert (wrapped.training, model.training) == (False, False)
    wrapped.train()
    assert model.training  # the wrapper passes its mode on
    assert judged(model, tta=True).training


def test_a_tta_run_evaluates_and_predicts_with_flips(tmp_path):
    run = cnnlab.train("seed-cnn", "sample", subset=300, epochs=1, tta=True, out=tmp_path / "r", verbose=False,
                       report=False)
    data = load_dataset("sample")
    logits, labels = collect_logits(FlipAverage(run.build_model()), BatchLoader(data.test, 500, run.preprocess))
    plain, _ = collect_logits(run.build_model(), BatchLoader(data.test, 500, run.preprocess))
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert run.metrics["test_accuracy"] == pytest.approx(accuracy)
    assert cnnlab.evaluate(run).accuracy == pytest.approx(accuracy)
    assert (logits.argmax(1) != plain.argmax(1)).any()  # the flips changed some answers: TTA was applied
    image = tmp_path / "first.png"
    Image.fromarray(data.test.x[0, 0].numpy()).save(image)
    top_class, top_probability = cnnlab.predict(run, [image], topk=1)[0].top[0]
    assert top_class == run.classes[int(logits[0].argmax())]
    assert top_probability == pytest.approx(logits[0].exp().max().item(), abs=1e-4)
