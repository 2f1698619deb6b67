"""Settings, schedules and recipes: the values they pick, and clear errors for impossible ones."""

from __future__ import annotations

import math

import pytest

from cnnlab.errors import UsageError
from cnnlab.training.recipes import RECIPES, recipe, settings_for
from cnnlab.settings import Settings, lr_factor


def test_constant_schedule_is_flat():
    assert [lr_factor(step, 100, Settings()) for step in (0, 50, 99)] == [1.0, 1.0, 1.0]


def test_onecycle_rises_over_the_warmup_then_falls_linearly_to_zero():
    s = Settings(schedule="onecycle", warmup=0.2)
    factors = [lr_factor(step, 100, s) for step in range(101)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[10] == pytest.approx(0.55)  # half way up: 0.1 + 0.9 * 10/20
    assert factors[20] == pytest.approx(1.0)  # the peak, at the end of the warmup
    assert factors[60] == pytest.approx(0.5)  # half way down the remaining 80 steps
    assert factors[100] == pytest.approx(0.0)
    assert max(factors) == factors[20]


def test_cosine_falls_as_half_a_cosine():
    s = Settings(schedule="cosine", warmup=0.0)
    assert lr_factor(0, 100, s) == pytest.approx(1.0)
    assert lr_factor(50, 100, s) == pytest.approx(0.5)
    assert lr_factor(25, 100, s) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(100, 100, s) == pytest.approx(0.0)


def test_the_lecture_recipe_is_the_defaults():
    model, values = recipe("lecture", "fashion-mnist")
    assert model == "seed-cnn"
    assert Settings(**values) == Settings()


def test_fast_recipe_per_dataset_and_flags_override_it():
    model, s = settings_for("fast", "fashion-mnist", {})
    assert (model, s.recipe, s.optimizer, s.schedule, s.precision, s.augment) == (
        "fast-cnn-28", "fast", "sgd", "onecycle", "auto", "flip")
    assert s.tta and s.channels_last
    mnist = settings_for("fast", "mnist", {})[1]
    assert (mnist.augment, mnist.tta) == ("none", False)  # a mirrored digit is not the same digit
    assert settings_for("fast", "sample", {})[0] == "fast-cnn-28"  # the sample is Fashion-MNIST
    assert settings_for("fast", "folder:/photos", {})[1].augment == "flip"  # any other dataset: "*"
    _, s = settings_for("fast", "fashion-mnist", {"epochs": 7, "precision": "fp32"})
    assert (s.epochs, s.precision, s.lr) == (7, "fp32", RECIPES["fast"]["fashion-mnist"][1]["lr"])


def test_another_optimizer_or_momentum_drops_the_recipes_nesterov():
    assert settings_for("fast", "fashion-mnist", {"optimizer": "adam"})[1].nesterov is False
    assert settings_for("fast", "fashion-mnist", {"momentum": 0.0})[1].nesterov is False
    assert settings_for("fast", "fashion-mnist", {"momentum": 0.8})[1].nesterov is False
    assert settings_for("fast", "fashion-mnist", {"momentum": 0.8, "nesterov": True})[1].nesterov is True
    with pytest.raises(UsageError, match="--nesterov needs --optimizer sgd"):
        settings_for("fast", "fashion-mnist", {"optimizer": "adam", "nesterov": True})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"schedule": "step"}, "unknown --schedule 'step'"),
        ({"precision": "fp16"}, "unknown --precision 'fp16'"),
        ({"augment": "rotate"}, "rotate"),
        ({"warmup": 1.0}, r"\[0, 1\)"),
        ({"label_smoothing": -0.1}, r"\[0, 1\)"),
        ({"nesterov": True}, "--nesterov needs --optimizer sgd"),
        ({"threads": 0}, "--threads must be from 1 to 1,024, got 0"),
        ({"threads": 10**20}, "--threads must be from 1 to 1,024, got 100000000000000000000"),
        ({"lr": math.nan}, "--lr must be a positive number up to 1e6, got nan"),
        ({"lr": 1e300}, "--lr must be a positive number up to 1e6, got 1e\\+300"),
        ({"val_fraction": math.nan}, r"--val-fraction must be in \[0, 1\), got nan"),
        ({"momentum": math.nan}, "--momentum and --weight-decay must be from 0 to 1e6, got nan and 0.0"),
        ({"weight_decay": math.inf}, "must be from 0 to 1e6, got 0.9 and inf"),
        ({"weight_decay": 3.4e38}, r"must be from 0 to 1e6, got 0.9 and 3.4e\+38"),
        ({"label_smoothing": math.nan}, r"\[0, 1\)"),
        ({"epochs": True}, "the setting epochs must be int, got True"),
        ({"lr": "0.1"}, "the setting lr must be float, got '0.1'"),
        ({"patience": 2.5}, "the setting patience must be int or None, got 2.5"),
    ],
)
def test_bad_settings(overrides, message):
    with pytest.raises(UsageError, match=message):
        settings_for("lecture", "sample", overrides)


def test_unknown_recipe():
    with pytest.raises(UsageError, match="unknown recipe 'quick'; use one of lecture, fast, fast-long"):
        recipe("quick", "mnist")
