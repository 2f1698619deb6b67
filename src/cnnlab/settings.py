"""Training settings: what `cnnlab train` can be told, checked, and the pieces they pick.

The defaults are lecture 001's recipe (Adam, lr 1e-3, batch 32, 5 epochs); recipes.py names
faster sets. A run stores its Settings in config.json, so `--resume` and reports read them back.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cnnlab.augment_spec import FORMS, parse_augment
from cnnlab.errors import UsageError

if TYPE_CHECKING:
    import torch

# The choices `cnnlab train` parses its flags against: torch-free, so that building the parser needs no torch.
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "onecycle", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")
FREEZES = ("none", "backbone")
AUGMENTS = FORMS  # the items of an --augment spec (augment_spec.py), which data/augment.py applies


@dataclass
class Settings:
    """How to train; the lectures' settings are the defaults (Adam, lr 1e-3, batch 32, 5 epochs)."""

    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    subset: int | None = None  # train on the first N training images
    patience: int | None = None  # stop after this many epochs without a better validation loss
    normalize: bool = True  # standardize with the training split's mean and std, else only / 255
    nesterov: bool = False  # SGD only
    schedule: str = "constant"  # the learning rate over the run: constant, onecycle or cosine
    warmup: float = 0.0  # share of the steps over which the rate rises linearly from lr / 10 (onecycle, cosine)
    label_smoothing: float = 0.0
    augment: str = "none"  # a spec (augment_spec.py): none, or items such as "flip, rotation(15), crop(4)"
    # NHWC memory layout: the same arithmetic as NCHW, and oneDNN and cuDNN convolutions run faster on it
    # (seed-cnn at batch 32 on 2 CPU cores: 1.6x). On by default; it leaves the lecture's settings as they are.
    channels_last: bool = True
    # bf16: autocast matmuls and convolutions; auto: bf16 where the hardware runs it natively (machine.py).
    # A run's config.json keeps the precision chosen, so that --resume trains on as it began.
    precision: str = "fp32"
    compile: bool = False  # torch.compile the model (a compile pause first; pays off on long GPU runs)
    threads: int | None = None  # CPU threads (default: PyTorch's, one per core; shared out under torchrun)
    tta: bool = False  # validate, test and predict on each image and its mirror image, averaged
    watch_test: bool = False  # also measure test accuracy after every epoch (it never picks the best epoch)
    recipe: str = "lecture"  # the recipe these settings started from (recipes.py)
    # Checkpoints within an epoch too, so that a killed run loses at most this much (the end of every
    # epoch always saves one): every N steps, and every S seconds; None turns either off.
    checkpoint_steps: int | None = None
    checkpoint_seconds: float | None = 60.0
    # Transfer learning (training/transfer.py): start from a famous network's ImageNet weights or a file's,
    # freeze the backbone (everything before the head, the last Linear layer) and train the head on cached
    # features, or unfreeze it after N epochs at backbone_lr times the rate (discriminative rates).
    pretrained: bool = False
    weights: str | None = None  # a safetensors file or state dict to start from
    freeze: str = "none"  # none or backbone
    unfreeze_after: int | None = None  # epochs with the backbone frozen before it trains too
    backbone_lr: float = 0.1  # the backbone's rate as a share of --lr once unfrozen

    @property
    def transfer(self) -> str:
        """"features" (the backbone frozen throughout: the head trains on cached features), "fine-tune" (frozen
        for unfreeze_after epochs, then all of it) or "whole" (every parameter trains from the start)."""
        if self.unfreeze_after is not None:
            return "fine-tune"
        return "features" if self.freeze == "backbone" else "whole"

    def check(self) -> None:
        kinds = {"int": int, "float": (int, float), "str": str, "bool": bool}  # from Python, values come unchecked
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type).removesuffix(" | None")
            if not (value is None and str(f.type).endswith(" | None")) and (
                    isinstance(value, bool) != (kind == "bool") or not isinstance(value, kinds[kind])):
                raise UsageError(f"the setting {f.name} must be {str(f.type).replace('|', 'or')}, got {value!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError("--epochs and --batch-size must be at least 1")
        if not (0 < self.lr <= 1e6):  # NaN fails too; a larger rate overflows the optimizers' float32 arithmetic
            raise UsageError(f"--lr must be a positive number up to 1e6, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise UsageError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}; use {' or '.join(OPTIMIZERS)}")
        if self.subset is not None and self.subset < 2:
            raise UsageError("--subset must be at least 2 images")
        if self.patience is not None and self.patience < 1:
            raise UsageError("--patience must be at least 1 epoch")
        if self.patience is not None and self.val_fraction == 0:
            raise UsageError("--patience needs a validation split to watch; keep --val-fraction above 0")
        # NaN fails too; as for --lr, larger values overflow the optimizers' float32 arithmetic
        if not (0 <= self.momentum <= 1e6 and 0 <= self.weight_decay <= 1e6):
            raise UsageError(f"--momentum and --weight-decay must be from 0 to 1e6, got {self.momentum} "
                             f"and {self.weight_decay}")
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed must be between 0 and 2**63 - 1, got {self.seed}")
        choices = {"--schedule": (self.schedule, SCHEDULES), "--precision": (self.precision, PRECISIONS)}
        for flag, (value, allowed) in choices.items():
            if value not in allowed:
                raise UsageError(f"unknown {flag} {value!r}; use one of {', '.join(allowed)}")
        check_augment(self.augment)
        if not 0 <= self.warmup < 1 or not 0 <= self.label_smoothing < 1:
            raise UsageError("--warmup and --label-smoothing must be in [0, 1)")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise UsageError("--nesterov needs --optimizer sgd and a --momentum above 0")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise UsageError(f"--threads must be from 1 to 1,024, got {self.threads}")
        if self.freeze not in FREEZES:
            raise UsageError(f"unknown --freeze {self.freeze!r}; use one of {', '.join(FREEZES)}")
        if self.unfreeze_after is not None and not 1 <= self.unfreeze_after < self.epochs:
            raise UsageError(f"--unfreeze-after {self.unfreeze_after} must be at least 1 and fewer than the "
                             f"{self.epochs} --epochs, so that both the head alone and the whole network train")
        if self.transfer == "features" and (parse_augment(self.augment).items or self.tta):
            raise UsageError("--freeze backbone trains the head on features computed once per image, so images are "
                             "never augmented or mirrored: leave out --augment and --tta, or fine-tune with "
                             "--unfreeze-after N, which trains on the images")
        if not 0 < self.backbone_lr <= 1:
            raise UsageError(f"--backbone-lr must be in (0, 1], a share of --lr; got {self.backbone_lr}")
        if self.checkpoint_steps is not None and self.checkpoint_steps < 1:
            raise UsageError("--checkpoint-steps must be at least 1")
        if self.checkpoint_seconds is not None and not (self.checkpoint_seconds > 0
                                                        and math.isfinite(self.checkpoint_seconds)):
            raise UsageError(f"--checkpoint-seconds must be a positive number, got {self.checkpoint_seconds}")


def check_augment(name: str) -> None:
    """A UsageError unless `name` is an augmentation spec (augment_spec.py reads it; the old names included)."""
    parse_augment(name)


def subset_cap(subset: int | None, available: int) -> int | None:
    """`subset`, capped by $CNNLAB_SUBSET: a quick run for smoke tests (the README's test sets it)."""
    cap = os.environ.get("CNNLAB_SUBSET")
    if not cap:
        return subset
    if not cap.isdecimal() or int(cap) < 2:
        raise UsageError(f"CNNLAB_SUBSET={cap!r} is not a number of images (2 or more); unset it to train on all")
    wanted = subset or available
    if int(cap) >= wanted or wanted > available:  # nothing to cut; a --subset too large is refused as ever
        return subset
    return int(cap)


def decay_groups(model: torch.nn.Module | Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """The model's parameters as the optimizer's groups: weight decay on the weights of dimension 2 or
    more (convolutions', linear layers'), none on the 1-D ones (biases, normalization layers' weights and
    biases: decaying a batch norm's scale towards 0 only fights the normalization; timm, nanoGPT and
    fastai leave them undecayed too). Always [decayed, undecayed], each in the model's order; with no
    weight decay, one group of all, as before the split (so those runs' checkpoints load as they are)."""
    params = list(model.parameters()) if hasattr(model, "parameters") else list(model)
    if weight_decay == 0:
        return [{"params": params, "weight_decay": 0.0}]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, s: Settings, head: str | None = None) -> torch.optim.Optimizer:
    """The optimizer of settings `s` over `model`'s parameters, in decay_groups' groups. With `head` (the
    dotted name of the model's head), the head's groups come first at --lr, then the backbone's at
    backbone_lr times it: discriminative rates, as fastai's fine_tune (a group's "name" says which)."""
    import torch  # here, not at the top: the CLI's parser reads this module's choices, and must not pay for torch

    if head is None:
        groups = decay_groups(model, s.weight_decay)
    else:
        named = list(model.named_parameters())
        parts = [("head", 1.0, [p for n, p in named if n.startswith(head + ".")]),
                 ("backbone", s.backbone_lr, [p for n, p in named if not n.startswith(head + ".")])]
        groups = [{**group, "lr": s.lr * factor, "name": name}
                  for name, factor, params in parts for group in decay_groups(params, s.weight_decay)]
    if s.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=s.lr)
    return torch.optim.Adam(groups, lr=s.lr)


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                         checkpoint: dict[str, Any]) -> None:
    """Load `checkpoint["optimizer"]` into `optimizer` (make_optimizer's, over `model`).

    A checkpoint written before decay_groups split the parameters holds one group of all of them in the
    model's order; it is laid onto the groups here (each parameter keeps its momentum or Adam moments,
    each group the saved rate and settings, the undecayed group weight decay 0), and the scheduler's
    per-group lists in `checkpoint["scheduler"]` (LambdaLR's base_lrs, _last_lr, lr_lambdas) are widened
    to match, in place, before the caller loads it. Any other mismatch raises the optimizer's ValueError.
    """
    saved = checkpoint["optimizer"]
    groups, old = optimizer.param_groups, saved["param_groups"]
    order = [id(p) for p in model.parameters()]
    if len(old) == 1 and len(groups) > 1 and len(old[0]["params"]) == len(order):
        position = {pid: i for i, pid in enumerate(order)}  # a parameter's place in the model, so in the old group
        new_ids, state, start = [], {}, 0
        for group in groups:
            new_ids.append(list(range(start, start + len(group["params"]))))
            for index, p in enumerate(group["params"], start):
                old_id = old[0]["params"][position[id(p)]]
                if old_id in saved["state"]:
                    state[index] = saved["state"][old_id]
            start += len(group["params"])
        saved = {"state": state, "param_groups": [
            {**old[0], "params": ids, "weight_decay": group["weight_decay"]} for ids, group in zip(new_ids, groups)]}
        scheduler = checkpoint.get("scheduler", {})
        for key in ("base_lrs", "_last_lr", "lr_lambdas"):
            if isinstance(scheduler.get(key), list) and len(scheduler[key]) == 1:
                scheduler[key] = scheduler[key] * len(groups)
    optimizer.load_state_dict(saved)


def lr_factor(step: int, total: int, s: Settings) -> float:
    """The learning rate at `step` of `total`, as a fraction of --lr.

    onecycle: up linearly from 1/10 over the warmup, then down linearly to 0 (airbench's shape);
    cosine: the same warmup, then a half cosine down to 0; constant: 1 throughout.
    """
    if s.schedule == "constant":
        return 1.0
    warm = int(s.warmup * total)
    if step < warm:
        return 0.1 + 0.9 * step / warm
    done = (step - warm) / max(1, total - warm)  # 0 -> 1 after the warmup
    if s.schedule == "onecycle":
        return max(0.0, 1.0 - done)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
