"""Training: a visible loop over epochs and batches, as in the lectures, that also keeps the
best weights, stops early when asked, survives NaN losses and Ctrl-C, and can resume.

    for epoch in epochs:
        for x, y in batches:  loss = cross_entropy(model(x), y); backward; step
        validate; keep the weights with the lowest validation loss (the lecture's rule)
    evaluate the best weights on the test split once, at the end
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_model as load_safetensors

from . import __version__, distributed
from .data.augment import check_augment
from .data import BatchLoader, ImageData, Split, channel_stats, load_dataset, train_val_split
from .errors import Interrupted, RunError, TrainingError, UsageError
from .evaluate import EVAL_BATCH, evaluate_model, load_run_data, loss_and_accuracy, resolve_device
from .formatting import summary_table
from .recipes import recipe as pick_recipe
from .models import load_model, short_name, stored_ref
from .runs import (
    FORMAT_VERSION, Run, load_checkpoint, open_run, save_checkpoint, save_weights, write_history, write_json,
    write_text,
)
from .summary import summarize

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "onecycle", "cosine")
PRECISIONS = ("fp32", "bf16")


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
    augment: str = "none"  # none, flip, crop or crop+flip (crop: shifts of up to 2 pixels)
    channels_last: bool = False  # NHWC memory layout, which oneDNN and cuDNN convolutions prefer
    precision: str = "fp32"  # bf16: autocast matmuls and convolutions (AMX / AVX-512 BF16 CPUs, GPUs)
    compile: bool = False  # torch.compile the model (a compile pause first; pays off on long GPU runs)
    threads: int | None = None  # CPU threads (default: PyTorch's, one per core; shared out under torchrun)
    recipe: str = "lecture"  # the recipe these settings started from (recipes.py)

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError("--epochs and --batch-size must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}; use {' or '.join(OPTIMIZERS)}")
        if self.subset is not None and self.subset < 2:
            raise UsageError("--subset must be at least 2 images")
        if self.patience is not None and self.patience < 1:
            raise UsageError("--patience must be at least 1 epoch")
        if self.patience is not None and self.val_fraction == 0:
            raise UsageError("--patience needs a validation split to watch; keep --val-fraction above 0")
        if self.momentum < 0 or self.weight_decay < 0:
            raise UsageError("--momentum and --weight-decay cannot be negative")
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed must be between 0 and 2**63 - 1, got {self.seed}")
        choices = {"--schedule": (self.schedule, SCHEDULES), "--precision": (self.precision, PRECISIONS)}
        for flag, (value, allowed) in choices.items():
            if value not in allowed:
                raise UsageError(f"unknown {flag} {value!r}; use one of {', '.join(allowed)}")
        check_augment(self.augment)
        if not 0 <= self.warmup < 1 or not 0 <= self.label_smoothing < 1:
            raise UsageError("--warmup and --label-smoothing must be in [0, 1)")
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be at least 1")


def settings_of(config: dict[str, Any]) -> Settings:
    """The Settings stored in a run's config.json (a run from before a setting existed gets its default)."""
    return Settings(**{k: v for k, v in config["train"].items() if k not in ("device", "processes")})


def split_for_training(dataset: ImageData, s: Settings) -> tuple[Split, Split]:
    """(fit, validation): the first `subset` training images, less a seeded validation share."""
    train_split = dataset.train.take(slice(0, s.subset)) if s.subset else dataset.train
    return train_val_split(train_split, s.val_fraction, s.seed)


def make_optimizer(model: torch.nn.Module, s: Settings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay
        )
    if s.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)


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


def default_out(model: str, dataset: str) -> Path:
    """runs/<model>-<dataset>-<time>, the dataset name made safe for a folder name."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in dataset.split("/")[-1] or dataset)
    return Path("runs") / f"{model}-{safe}-{datetime.now():%Y%m%d-%H%M%S}"


def _fmt(value: float, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2%}" if percent else f"{value:.4f}"


def train(
    model: str | None = None,
    dataset: str | ImageData = "sample",
    *,
    recipe: str = "lecture",
    data_dir: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
    skip_bad_images: bool = False,
    out: str | Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
    verbose: bool = True,
    **settings: Any,
) -> Run:
    """Train `model` on `dataset` and return its run folder, read back.

    model: a registered name, a spec (text or .json/.toml file) or `package.module:attr`;
    None: the recipe's model for this dataset (seed-cnn for the lecture's recipe).

    recipe: "lecture" (the defaults), "fast" or "fast-long" (recipes.py); `settings` override it.

    settings: the fields of `Settings` (epochs, batch_size, lr, optimizer, seed, ...).

    Started by torchrun, each process trains its share of every batch (distributed.py).
    """
    name = dataset if isinstance(dataset, str) else dataset.name
    recipe_model, recipe_settings = pick_recipe(recipe, name)
    s = Settings(**{**recipe_settings, **settings})
    s.check()
    model = model or recipe_model
    ctx = distributed.setup(resolve_device(device))
    try:
        target = distributed.rank_device(resolve_device(device), ctx)
        if isinstance(dataset, str):
            dataset = load_dataset(
                dataset, data_dir=data_dir, download=download, image_size=image_size,
                channels=channels, skip_bad_images=skip_bad_images,
            )
        ref = stored_ref(model)
        # Rank 0 names the folder: the ranks' clocks may read different seconds.
        out = distributed.from_main(Path(out) if out is not None else default_out(short_name(model), dataset.name), ctx)
        if out.exists() and not out.is_dir():
            raise RunError(f"--out {out} is a file; a run needs a folder")
        if (out / "config.json").exists() and not overwrite:
            raise RunError(
                f"{out} already holds a run; continue it with --resume {out}, replace it with --overwrite, "
                "or choose another --out"
            )

        fit, val = split_for_training(dataset, s)
        mean, std = channel_stats(fit.x) if s.normalize else ([0.0] * fit.x.shape[1], [1.0] * fit.x.shape[1])
        torch.manual_seed(s.seed)
        net = load_model(ref, dataset.input_shape, dataset.num_classes)
        config = {
            "format": FORMAT_VERSION,
            "cnnlab_version": __version__,
            "torch_version": torch.__version__,
            "created": datetime.now().isoformat(timespec="seconds"),
            "model": ref,
            "parameters": sum(p.numel() for p in net.parameters()),
            "data": {
                "dataset": dataset.name, "source": dataset.source, "classes": dataset.classes,
                "input_shape": list(dataset.input_shape), "mean": mean, "std": std,
                "data_dir": str(Path(data_dir).expanduser().resolve()) if data_dir is not None else None,
                "image_size": image_size,
                "channels": channels, "skip_bad_images": skip_bad_images,
                "train_images": len(fit), "val_images": len(val), "test_images": len(dataset.test),
            },
            "train": {**vars(s), "device": device, "processes": ctx.world_size},
        }
        distributed.barrier(ctx)  # every rank has checked the folder before rank 0 writes into it
        if ctx.is_main:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunError(f"cannot make the run folder {out}: {exc.strerror or exc}") from exc
            for stale in ("metrics.json", "history.csv", "model.safetensors", "checkpoint.pt", "summary.txt"):
                (out / stale).unlink(missing_ok=True)  # an overwritten run must not mix with the old one
            write_json(out / "config.json", config)
        return _fit(net, dataset, fit, val, config, out, target, None, verbose, ctx)
    finally:
        distributed.teardown(ctx)


def resume(run: str | Path, epochs: int | None = None, device: str = "auto", verbose: bool = True) -> Run:
    """Continue an interrupted run from its last completed epoch (optionally up to more epochs)."""
    previous = open_run(run)
    state = load_checkpoint(previous.path / "checkpoint.pt") if (previous.path / "checkpoint.pt").exists() else None
    if state is None:
        raise RunError(
            f"{previous.path} has no checkpoint.pt: it did not complete an epoch. Start it again with "
            f"the same command and --overwrite"
        )
    config = previous.config
    if epochs is not None:
        if epochs < max(1, state["epoch"]):
            raise UsageError(f"--epochs {epochs} is fewer than the {state['epoch']} epochs this run has done")
        config["train"]["epochs"] = epochs
    dataset = load_run_data(previous)
    fit, val = split_for_training(dataset, settings_of(config))
    net = load_model(config["model"], tuple(config["data"]["input_shape"]), len(config["data"]["classes"]))
    write_json(previous.path / "config.json", config)
    state["history"] = previous.history[: state["epoch"]]  # a row written after the checkpoint is redone
    return _fit(net, dataset, fit, val, config, previous.path, resolve_device(device), state, verbose)


def _fit(
    net: torch.nn.Module,
    dataset: ImageData,
    fit: Split,
    val: Split,
    config: dict[str, Any],
    out: Path,
    device: torch.device,
    state: dict[str, Any] | None,
    verbose: bool,
) -> Run:
    """The training loop proper, from scratch (state None) or from a checkpoint's state."""
    s = settings_of(config)
    mean, std = config["data"]["mean"], config["data"]["std"]
    net.to(device)
    optimizer = make_optimizer(net, s)
    train_loader = BatchLoader(fit, s.batch_size, mean, std, shuffle=True, seed=s.seed, device=device)
    val_loader = BatchLoader(val, EVAL_BATCH, mean, std, device=device)
    history: list[dict[str, float]] = []
    best_val, best_epoch, bad_epochs, start = math.inf, 0, 0, 0
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        best_val, best_epoch = state["best_val_loss"], state["best_epoch"]
        bad_epochs, start, history = state["bad_epochs"], state["epoch"], state["history"]

    summary = summarize(net, tuple(dataset.input_shape), name=short_name(config["model"]))
    write_text(out / "summary.txt", summary_table(summary, explain=True) + "\n")
    console = Console(quiet=not verbose, highlight=False, soft_wrap=True)
    console.print(summary_table(summary) + "\n", markup=False)
    console.print(
        f"[bold]{short_name(config['model'])}[/] on [bold]{dataset.name}[/]: {config['parameters']:,} parameters, "
        f"{len(fit):,} training / {len(val):,} validation images {tuple(dataset.input_shape)}, "
        f"{s.optimizer} lr {s.lr:g}, batch {s.batch_size}, {s.epochs} epochs, {device.type}; run folder {out}"
    )
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"), console=console, transient=True, disable=not verbose,
    )
    epoch = start
    try:
        with progress:
            for epoch in range(start, s.epochs):
                net.train()
                train_loader.set_epoch(epoch)
                task = progress.add_task(f"epoch {epoch + 1}/{s.epochs}", total=len(train_loader), stats="")
                started = time.perf_counter()
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), device=device, dtype=torch.int64)
                seen = 0
                for step, (x, y) in enumerate(train_loader):
                    logits = net(x)  # (B, classes)
                    loss = F.cross_entropy(logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += loss.detach() * len(y)
                    correct += (logits.argmax(1) == y).sum()
                    seen += len(y)
                    if step % 20 == 0 or step == len(train_loader) - 1:  # .item() waits for the GPU: not every step
                        mean_loss = loss_sum.item() / seen
                        if not math.isfinite(mean_loss):
                            raise TrainingError(
                                f"the loss became {mean_loss} in epoch {epoch + 1} (batch {step + 1}): training "
                                f"diverged. Lower the learning rate (now --lr {s.lr:g}), e.g. to {s.lr / 10:g}. "
                                f"The best weights so far are kept in {out / 'model.safetensors'}."
                            )
                        stats = f"loss {mean_loss:.4f} acc {correct.item() / seen:.2%}"
                        progress.update(task, completed=step + 1, stats=stats)
                seconds = time.perf_counter() - started
                val_loss, val_acc = loss_and_accuracy(net, val_loader)
                row = {
                    "epoch": epoch + 1, "seconds": round(seconds, 3),
                    "train_loss": loss_sum.item() / seen, "train_accuracy": correct.item() / seen,
                    "val_loss": val_loss, "val_accuracy": val_acc, "lr": optimizer.param_groups[0]["lr"],
                }
                history.append(row)
                progress.remove_task(task)
                # Keep the weights with the lowest validation loss; without a validation split, the last.
                improved = len(val) == 0 or val_loss < best_val
                if improved:
                    best_val, best_epoch, bad_epochs = val_loss, epoch + 1, 0
                    save_weights(net, out / "model.safetensors")
                else:
                    bad_epochs += 1
                write_history(out / "history.csv", history)
                save_checkpoint(
                    {
                        "model": net.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                        "epoch": epoch + 1, "best_val_loss": best_val, "best_epoch": best_epoch,
                        "bad_epochs": bad_epochs,
                    },
                    out / "checkpoint.pt",
                )
                console.print(
                    f"epoch {epoch + 1:>3}/{s.epochs}  train loss {_fmt(row['train_loss'])} "
                    f"acc {_fmt(row['train_accuracy'], True)}  val loss {_fmt(val_loss)} "
                    f"acc {_fmt(val_acc, True)}  {seconds:6.1f} s" + ("  [green]best[/]" if improved else "")
                )
                if s.patience is not None and bad_epochs >= s.patience:
                    console.print(f"early stop: no better validation loss for {s.patience} epochs")
                    break
    except KeyboardInterrupt:
        if epoch == 0:
            raise Interrupted(
                f"training was interrupted in its first epoch, before anything was saved in {out}; "
                "start it again with the same command and --overwrite"
            ) from None
        raise Interrupted(
            f"training was interrupted in epoch {epoch + 1}; epochs 1-{epoch} are saved in {out}. "
            f"Continue with: cnnlab train --resume {out}"
        ) from None

    return _finish(net, dataset, config, out, history, best_epoch, device, console)


def _finish(
    net: torch.nn.Module, dataset: ImageData, config: dict[str, Any], out: Path,
    history: list[dict[str, float]], best_epoch: int, device: torch.device, console: Console,
) -> Run:
    """Evaluate the best weights on the test split (and extra splits), write metrics.json."""
    load_safetensors(net, out / "model.safetensors", device=str(device))  # the best epoch's, not the last
    net.eval()
    mean, std = config["data"]["mean"], config["data"]["std"]
    test = evaluate_model(net, dataset.test, dataset.classes, mean, std, "test", device)
    extra = {
        name: evaluate_model(net, split, dataset.classes, mean, std, name, device).accuracy
        for name, split in dataset.extra.items()
    }
    metrics = {
        **test.to_dict(),
        "test_accuracy": test.accuracy,
        "extra_accuracy": extra,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_seconds": round(sum(row["seconds"] for row in history), 3),
        "parameters": config["parameters"],
    }
    write_json(out / "metrics.json", metrics)
    shifted = "".join(f", {name} {acc:.2%}" for name, acc in extra.items())
    console.print(
        f"test accuracy {test.accuracy:.2%} (best epoch {best_epoch}, {metrics['train_seconds']:.1f} s of "
        f"training{shifted}); results in {out}\n"
    )
    return open_run(out)
