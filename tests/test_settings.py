"""Settings, schedules and recipes: the values they pick, and clear errors for impossible ones."""

from __future__ import annotations

import math

import pytest

from cnnlab.errors import UsageError
from cnnlab.training.recipes import RECIPES, recipe, settings_for
from cnnlab.settings import OPTIMIZERS, Settings, load_optimizer_state, lr_factor, make_optimizer


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
        "strided-cnn-28", "fast", "sgd", "onecycle", "auto", "flip")
    assert (s.epochs, s.batch_size, s.lr) == (2, 128, 0.15)
    assert s.tta and s.channels_last
    mnist = settings_for("fast", "mnist", {})[1]
    assert (mnist.augment, mnist.tta) == ("none", False)  # a mirrored digit is not the same digit
    assert settings_for("fast", "sample", {})[0] == "strided-cnn-28"  # the sample is Fashion-MNIST
    assert settings_for("fast", "cifar10", {})[0] == "fast-cnn-32"
    assert settings_for("fast-long", "cifar10", {})[0] == "fast-cnn-32-wide"
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


# Weight decay on conv and linear weights only (issue 18): fast-cnn-28's convolutions have no bias
# (batch norm follows them), so its 1-D parameters are 3 batch norms' weights and biases and the
# classifier's bias.
DECAY_SPLIT = {
    "fast-cnn-28": ((4, 144 + 4_608 + 18_432 + 640), (7, 2 * (16 + 32 + 64) + 10)),
    "small-cnn-32": ((7, 287_264), (13, 906)),
}


def _sizes(group):
    return len(group["params"]), sum(p.numel() for p in group["params"])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("name", DECAY_SPLIT)
def test_weight_decay_falls_on_weights_not_on_biases_or_norms(name, optimizer):
    import cnnlab

    shape = (1, 32, 32) if name.endswith("32") else (1, 28, 28)
    model = cnnlab.get_model(name, shape)
    groups = make_optimizer(model, Settings(optimizer=optimizer, weight_decay=5e-4)).param_groups
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert (_sizes(groups[0]), _sizes(groups[1])) == DECAY_SPLIT[name]
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    # each group in the model's order, decayed first: a checkpoint's numbering is the same every time
    order = {id(p): i for i, p in enumerate(model.parameters())}
    for group in groups:
        places = [order[id(p)] for p in group["params"]]
        assert places == sorted(places)
    # no weight decay: one group of all, in the model's order, as before the split
    (alone,) = make_optimizer(model, Settings(optimizer=optimizer)).param_groups
    assert [id(p) for p in alone["params"]] == [id(p) for p in model.parameters()]
    assert alone["weight_decay"] == 0.0


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_step_with_zero_gradients_shrinks_conv_weights_and_leaves_batch_norm_alone(optimizer):
    import cnnlab
    import torch

    model = cnnlab.get_model("fast-cnn-28")
    conv, norm, linear = model[0], model[2], model[14]
    assert (type(conv), type(norm), type(linear)) == (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)
    lr, wd = 0.01, 0.1
    opt = make_optimizer(model, Settings(optimizer=optimizer, lr=lr, weight_decay=wd))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(norm.weight, before["2.weight"]) and torch.equal(norm.weight, torch.ones(16))
    assert torch.equal(norm.bias, before["2.bias"]) and torch.equal(linear.bias, before["14.bias"])
    if optimizer == "adam":  # L2 added to the gradient g = wd * w, then Adam's first step: lr * g / (|g| + eps)
        g = wd * before["0.weight"]
        assert torch.allclose(conv.weight, before["0.weight"] - lr * g / (g.abs() + 1e-8), rtol=0, atol=1e-6)
        assert conv.weight.abs().sum() < before["0.weight"].abs().sum()
    else:  # SGD's first step and AdamW's decoupled decay: exactly w * (1 - lr * wd)
        assert torch.allclose(conv.weight, before["0.weight"] * (1 - lr * wd), rtol=1e-6, atol=0)
    assert not torch.equal(linear.weight, before["14.weight"])


def _train_a_little(model, optimizer, scheduler, steps=3):
    import torch

    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(8, 1, 28, 28, generator=generator), torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()


def _saved(optimizer, scheduler):
    """The two states as a checkpoint holds them, after torch.save and torch.load (weights only)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_checkpoint_from_before_the_split_resumes_into_the_two_groups(optimizer):
    """One group of all parameters (make_optimizer before issue 18) lands on the decayed and undecayed
    groups with each parameter's momentum or moments, and the schedule steps both groups on."""
    import cnnlab
    import torch

    s = Settings(optimizer=optimizer, lr=0.05, weight_decay=5e-4, nesterov=optimizer == "sgd",
                 schedule="onecycle", warmup=0.2)
    total = 20
    model = cnnlab.get_model("fast-cnn-28")
    params = list(model.parameters())
    if optimizer == "sgd":
        old = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, nesterov=True, weight_decay=s.weight_decay)
    else:
        old = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    old_scheduler = torch.optim.lr_scheduler.LambdaLR(old, lambda step: lr_factor(step, total, s))
    _train_a_little(model, old, old_scheduler)
    checkpoint = _saved(old, old_scheduler)

    # as training/loop.py resumes: a new optimizer and scheduler, then the checkpoint's states
    new = make_optimizer(model, s)
    scheduler = torch.optim.lr_scheduler.LambdaLR(new, lambda step: lr_factor(step, total, s))
    with pytest.raises(ValueError, match="different number of parameter groups"):
        new.load_state_dict(checkpoint["optimizer"])  # what torch does with it unaided
    load_optimizer_state(new, model, checkpoint)
    scheduler.load_state_dict(checkpoint["scheduler"])

    assert [g["weight_decay"] for g in new.param_groups] == [5e-4, 0.0]
    assert [_sizes(g) for g in new.param_groups] == list(DECAY_SPLIT["fast-cnn-28"])
    keys = ["momentum_buffer"] if optimizer == "sgd" else ["step", "exp_avg", "exp_avg_sq"]
    for p in params:
        for key in keys:
            assert torch.equal(new.state[p][key], old.state[p][key])
    assert new.state[params[0]][keys[-1]].shape == params[0].shape  # each state on its own parameter
    assert scheduler.last_epoch == 3
    _train_a_little(model, new, scheduler, steps=1)  # a one-group schedule would stop here (zip strict)
    assert [g["lr"] for g in new.param_groups] == pytest.approx([s.lr * lr_factor(4, total, s)] * 2)
    assert all(g["initial_lr"] == s.lr for g in new.param_groups)


def test_checkpoints_of_the_grouped_optimizer_load_as_they_are():
    import cnnlab
    import torch

    s = Settings(optimizer="sgd", lr=0.05, weight_decay=5e-4)
    model = cnnlab.get_model("fast-cnn-28")
    opt = make_optimizer(model, s)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    _train_a_little(model, opt, sched)
    checkpoint = _saved(opt, sched)
    again = make_optimizer(model, s)
    load_optimizer_state(again, model, checkpoint)
    assert again.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    assert all(torch.equal(again.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])
               for p in model.parameters())
    assert checkpoint["scheduler"]["base_lrs"] == [0.05, 0.05]


def test_a_single_group_checkpoint_of_another_model_is_still_refused():
    import cnnlab
    import torch

    other = cnnlab.get_model("seed-mlp")
    checkpoint = {"optimizer": torch.optim.SGD(other.parameters(), lr=0.1, weight_decay=5e-4).state_dict()}
    model = cnnlab.get_model("fast-cnn-28")
    with pytest.raises(ValueError):  # training/loop.py makes it a RunError: "does not fit the run's model"
        load_optimizer_state(make_optimizer(model, Settings(optimizer="sgd", weight_decay=5e-4)), model, checkpoint)
