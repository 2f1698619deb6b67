"""Training: a visible loop over epochs and batches, as in the lectures, that also keeps the
best weights, stops early when asked, survives NaN losses and Ctrl-C, and can resume.

    for epoch in epochs:
        for x, y in batches:  loss = cross_entropy(model(x), y); backward; step
        validate; keep the weights with the lowest validation loss (the lecture's rule)
    evaluate the best weights on the test split once, at the end
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape

from cnnlab.version import __version__
from cnnlab.training import distributed
from cnnlab.training import machine
from cnnlab.data import ImageData, Split, channel_stats, load_dataset, train_val_split
from cnnlab.errors import Interrupted, RunError, UsageError
from cnnlab.data.preprocess import Preprocess
from cnnlab.inspect.evaluate import evaluate_model, evaluation_of, load_run_data
from cnnlab.views.formatting import summary_table
from cnnlab.training.lock import hold_run_folder
from cnnlab.models import load_model, short_name, stored_ref
from cnnlab.models.famous import famous
from cnnlab.models.pretrained import head_name, imagenet_preprocess
from cnnlab.training.recipes import settings_for
from cnnlab.runs.config import DataConfig, Precision, RunConfig
from cnnlab.runs.folder import (
    Run, load_checkpoint, load_safetensors, open_run, save_weights, write_history, write_json,
    write_text,
)
from cnnlab.runs.trained import TrainedModel, resolve_device
from cnnlab.settings import Settings, subset_cap
from cnnlab.inspect.summary import summarize
from cnnlab.training.progress import Display
from cnnlab.training import transfer
from cnnlab.training.trainer import Epoch, Step, Trainer


# train()'s options that say how the dataset is read (compare reads it once with them, for all its models).
DATA_OPTIONS = ("data_dir", "download", "image_size", "channels", "skip_bad_images")


def split_for_training(dataset: ImageData, s: Settings) -> tuple[Split, Split]:
    """(fit, validation): the first `subset` training images, less a seeded validation share."""
    if s.subset is not None and s.subset > len(dataset.train):
        raise UsageError(f"--subset {s.subset:,} is more than the {len(dataset.train):,} training images of "
                         f"{dataset.name}; give at most {len(dataset.train):,}, or leave it out to train on all")
    train_split = dataset.train.take(slice(0, s.subset)) if s.subset else dataset.train
    return train_val_split(train_split, s.val_fraction, s.seed)


def default_out(model: str, dataset: str) -> Path:
    """runs/<model>-<dataset>-<time>, the dataset name made safe for a folder name."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in dataset.split("/")[-1] or dataset)
    return Path("runs") / f"{model}-{safe}-{datetime.now():%Y%m%d-%H%M%S}"


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
    report: bool = True,
    **settings: Any,
) -> Run | None:
    """Train `model` on `dataset` and return its run folder, read back; with `report`, the run's
    report.html is written at the end.

    model: a registered name, a spec (text or .json/.toml file) or `package.module:attr`;
    None: the recipe's model for this dataset (seed-cnn for the lecture's recipe).

    recipe: "lecture" (the defaults), "fast" or "fast-long" (recipes.py); `settings` override it.

    settings: the fields of `Settings` (epochs, batch_size, lr, optimizer, seed, ...).

    Started by torchrun, each process trains its share of every batch (distributed.py); rank 0
    alone writes the run folder and returns it, the other ranks return None.
    """
    name = dataset if isinstance(dataset, str) else dataset.name
    recipe_model, s = settings_for(recipe, name, settings)
    model = model or recipe_model
    if s.weights is not None:  # stored absolute: --resume may start from another folder
        s.weights = str(Path(s.weights).expanduser().resolve())
    imagenet = transfer.imagenet_input(model, s)
    # A pretrained network reads the data's images at their size and fits them to its own input as it goes
    # (--image-size chooses that input, 224 by default); a famous one takes colour images.
    model_size, image_size = (image_size or 224, None) if imagenet else (None, image_size)
    channels = 3 if channels is None and famous(model) else channels
    with distributed.session(resolve_device(device)) as ctx:
        transfer.check_run(s, ctx.world_size)
        if s.batch_size % ctx.world_size:
            raise UsageError(
                f"the batch size {s.batch_size} does not split evenly over {ctx.world_size} processes; "
                f"use a multiple of {ctx.world_size}"
            )
        target = distributed.rank_device(resolve_device(device), ctx)
        asked = s.precision
        # Every rank trains in rank 0's choice: a timed choice could differ between processes.
        choice = distributed.from_main(machine.choose_precision(asked, target) if ctx.is_main else None, ctx)
        s.precision = choice.precision
        _check_precision(s, target)
        if isinstance(dataset, str):
            dataset = load_dataset(
                dataset, data_dir=data_dir, download=download, image_size=image_size,
                channels=channels, skip_bad_images=skip_bad_images,
            )
        ref = stored_ref(model)
        # Rank 0 names the folder: the ranks' clocks may read different seconds.
        out = Path(out) if out is not None else default_out(short_name(model), dataset.name)
        out = distributed.from_main(out, ctx)
        if out.exists() and not out.is_dir():
            raise RunError(f"--out {out} is a file; a run needs a folder")
        _check_free(out, overwrite)

        capped = subset_cap(s.subset, len(dataset.train))
        if capped != s.subset and ctx.is_main and verbose:
            print(f"CNNLAB_SUBSET is set: training on the first {capped:,} of {len(dataset.train):,} images")
        s.subset = capped  # stored in config.json, so --resume trains on the same images
        fit, val = split_for_training(dataset, s)
        if len(fit) < ctx.world_size:
            raise UsageError(f"{len(fit)} training images cannot be shared among {ctx.world_size} processes")
        mean, std = channel_stats(fit.x) if s.normalize else ([0.0] * fit.x.shape[1], [1.0] * fit.x.shape[1])
        preprocess = (imagenet_preprocess(model_size, s.channels_last, model) if imagenet else
                      Preprocess(tuple(dataset.input_shape), tuple(mean), tuple(std),  # type: ignore[arg-type]
                                 channels_last=s.channels_last))
        torch.manual_seed(s.seed)
        net = load_model(ref, preprocess.input_shape, dataset.num_classes)
        notes = transfer.start_weights(net, model, s)
        config = RunConfig(
            model=ref,
            parameters=sum(p.numel() for p in net.parameters()),
            data=DataConfig(
                dataset=dataset.name, source=dataset.source, classes=dataset.classes,
                input_shape=tuple(dataset.input_shape), mean=mean, std=std,  # type: ignore[arg-type]
                data_dir=str(Path(data_dir).expanduser().resolve()) if data_dir is not None else None,
                image_size=image_size, channels=channels, skip_bad_images=skip_bad_images,
                train_images=len(fit), val_images=len(val), test_images=len(dataset.test),
            ),
            train=s,
            preprocess=preprocess,
            transfer=transfer.describe(s, head_name(net), notes) if notes or s.transfer != "whole" else None,
            device=device, processes=ctx.world_size, precision=Precision(asked, choice.why),
            cnnlab_version=__version__, torch_version=torch.__version__,
            created=datetime.now().isoformat(timespec="seconds"),
        )
        distributed.barrier(ctx)  # every rank has checked the folder before rank 0 writes into it
        with contextlib.ExitStack() as held:
            # Checked again under the lock: another writer may have finished a run there meanwhile.
            hold_run_folder(out, held, ctx, then=lambda: _check_free(out, overwrite))
            if ctx.is_main:
                for stale in ("metrics.json", "history.csv", "model.safetensors", "checkpoint.pt", "summary.txt",
                              "report.html"):
                    (out / stale).unlink(missing_ok=True)  # an overwritten run must not mix with the old one
                write_json(out / "config.json", config.to_dict())
            run = _fit(net, dataset, fit, val, config, out, target, None, verbose, ctx)
            _report(run, dataset, device, verbose, report)
        return run


def resume(run: str | Path | Run, epochs: int | None = None, device: str = "auto", verbose: bool = True,
           report: bool = True, trust_code: bool = False) -> Run | None:
    """Continue an interrupted run from its last checkpoint (optionally up to more epochs); a run
    killed before its first checkpoint starts again from the beginning with its own settings.

    A schedule (onecycle, cosine) is laid over the new number of epochs from the step it stands at.
    `trust_code`: the run's model may be `package.module:attr`, imported and run (see runs.open_run).
    Under torchrun every rank reads the run folder, so it must be on a filesystem they share.
    """
    trust_code = trust_code or (isinstance(run, Run) and run.trust_code)
    path = open_run(run.path if isinstance(run, Run) else run, trust_code=trust_code).path  # checked before locking
    with distributed.session(resolve_device(device)) as ctx, contextlib.ExitStack() as held:
        hold_run_folder(path, held, ctx)  # a run still being trained is not resumed under its writer's feet
        previous = open_run(path, trust_code=trust_code)  # read again: its writer may have gone on meanwhile
        config = previous.config
        if ctx.world_size != config.processes:
            raise UsageError(
                f"{path} was trained by {config.processes} processes; resume it with "
                "as many (each takes its share of every batch, and the batch must split the same way)"
            )
        state = load_checkpoint(path / "checkpoint.pt") if (path / "checkpoint.pt").exists() else None
        done = state["epoch"] if state is not None else 0
        within = state is not None and state.get("step", 0) > 0  # its checkpoint is inside epoch done + 1
        if epochs is not None:
            if epochs < max(1, done + within):
                raise UsageError(f"--epochs {epochs} is fewer than the {done + within} epochs this run has done "
                                 f"or begun")
            config.train.epochs = epochs
        s = config.train
        dataset = load_run_data(previous)
        fit, val = split_for_training(dataset, s)
        if state is None:
            torch.manual_seed(s.seed)  # the same first weights as the run began with
        net = previous.build_model(weights=False)
        if state is None:
            transfer.start_weights(net, config.model, s)
        target = distributed.rank_device(resolve_device(device), ctx)
        _check_precision(s, target)
        distributed.barrier(ctx)  # every rank has read config.json before rank 0 rewrites it
        if ctx.is_main:
            write_json(path / "config.json", config.to_dict())
        if state is not None:
            state["history"] = previous.history[:done]  # a row written after the checkpoint is redone
        finished = _fit(net, dataset, fit, val, config, path, target, state, verbose, ctx)
        _report(finished, dataset, device, verbose, report)
        return finished


def _report(run: Run | None, dataset: ImageData, device: str, verbose: bool, report: bool) -> None:
    """The run's report.html at the end of training, on rank 0 (`run` is None on the others)."""
    if run is not None and report:
        from cnnlab.report.page import after_training  # matplotlib is imported only when a report is written

        after_training(run, dataset, device, verbose)


def _check_free(out: Path, overwrite: bool) -> None:
    if (out / "config.json").exists() and not overwrite:
        raise RunError(
            f"{out} already holds a run; continue it with --resume {out}, replace it with --overwrite, "
            "or choose another --out"
        )


def _check_precision(s: Settings, device: torch.device) -> None:
    """Refuse bf16 on a GPU without bfloat16 arithmetic before anything is written."""
    if s.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"{torch.cuda.get_device_name(device)} has no bfloat16 arithmetic; leave out --precision bf16")


def _describe(s: Settings, device: torch.device, ctx: distributed.Context) -> str:
    """The settings that shape this run, for its first printed line."""
    parts = [f"{s.optimizer}{' nesterov' if s.nesterov else ''} lr {s.lr:g}"
             + (f" {s.schedule} (warmup {s.warmup:g})" if s.schedule != "constant" else ""),
             f"batch {s.batch_size}", f"{s.epochs} epochs"]
    parts += [f"weight decay {s.weight_decay:g}"] if s.weight_decay else []
    parts += [f"label smoothing {s.label_smoothing:g}"] if s.label_smoothing else []
    parts += [f"augment {s.augment}"] if s.augment != "none" else []
    parts += [name for name, on in (("NCHW layout", not s.channels_last), ("bf16", s.precision == "bf16"),
                                    ("flip TTA", s.tta), ("compiled", s.compile)) if on]
    where = f"{ctx.world_size} processes on {device.type}" if ctx.world_size > 1 else device.type
    return ", ".join(parts + [where])


def _fit(
    net: torch.nn.Module,
    dataset: ImageData,
    fit: Split,
    val: Split,
    config: RunConfig,
    out: Path,
    device: torch.device,
    state: dict[str, Any] | None,
    verbose: bool,
    ctx: distributed.Context,
) -> Run | None:
    """Run the loop (trainer.py) from scratch (state None) or from a checkpoint's state, and act on its
    events: show progress, save the best weights, history.csv and checkpoints, stop early.

    Under torchrun every rank runs the loop on its share of each batch; only rank 0 prints, validates
    and writes. Should rank 0 fail, its process exits and torchrun stops the others.
    """
    s = config.train
    display = Display(verbose and ctx.is_main, s.epochs)
    features = None
    if s.transfer != "whole":
        head = head_name(net)
        # Frozen where the run starts: the summary counts trainable and frozen parameters from this.
        transfer.set_frozen(net, head, transfer.frozen_in(s, state["epoch"] if state else 0))
        if s.transfer == "features":
            net.to(device, memory_format=torch.channels_last if s.channels_last else torch.preserve_format)
            features = transfer.cached_features(net, head, config.preprocess, {"fit": fit, "val": val,
                                                "test": dataset.test}, device, s.precision == "bf16",
                                                say=lambda text: display.print(text, markup=False))
    trainer = Trainer(net, config, fit, val, dataset.test, out, device, state, ctx, features)
    summary = summarize(net, tuple(config.preprocess.input_shape), name=short_name(config.model))
    if ctx.is_main:
        write_text(out / "summary.txt", summary_table(summary, explain=True) + "\n")
    display.print(summary_table(summary) + "\n", markup=False)
    # A pretrained network's preprocessing fits the images to its own input as they are read.
    read_at = "" if config.preprocess.input_shape == dataset.input_shape else f" read at {config.preprocess.input_shape}"
    display.print(
        f"[bold]{escape(short_name(config.model))}[/] on [bold]{escape(dataset.name)}[/]: "
        f"{config.parameters:,} parameters, "
        f"{len(fit):,} training / {len(val):,} validation images {tuple(dataset.input_shape)}{read_at}, "
        f"{_describe(s, device, ctx)}; run folder {out}"
    )
    if dataset.note:  # a folder's images: decoded now (and cached), or read from the cache
        display.print(dataset.note, markup=False)
    if config.precision is not None and config.precision.asked == "auto":
        display.print(f"precision {s.precision} (auto): {config.precision.why}; --precision fp32|bf16 to choose",
                      markup=False)
    # A run that stopped early and was cut before its test is finished, not trained on.
    stopped = s.patience is not None and trainer.bad_epochs >= s.patience
    epoch = trainer.start
    saved = time.perf_counter()
    try:
        with display:
            for event in trainer.run(stopped):
                epoch = event.row["epoch"] - 1 if isinstance(event, Epoch) else event.epoch
                if isinstance(event, Step):
                    display.step(event)
                    # A checkpoint within the epoch, every --checkpoint-steps steps and --checkpoint-seconds.
                    if ctx.is_main and event.step + 1 < event.steps and (
                        (s.checkpoint_steps and (event.step + 1) % s.checkpoint_steps == 0)
                        or (s.checkpoint_seconds and time.perf_counter() - saved >= s.checkpoint_seconds)
                    ) and trainer.finite():
                        trainer.checkpoint(event.epoch, event.step + 1)
                        saved = time.perf_counter()
                    continue
                if ctx.is_main:
                    if event.improved:
                        save_weights(net, out / "model.safetensors")
                    write_history(out / "history.csv", trainer.history)
                    trainer.checkpoint(epoch + 1)
                    saved = time.perf_counter()
                display.epoch(event)
                if s.patience is not None and event.bad_epochs >= s.patience:
                    display.print(f"early stop: no better validation loss for {s.patience} epochs")
                    break
    except KeyboardInterrupt:
        then = (f"it goes on from its last checkpoint ({trainer.saved_at}) with" if trainer.saved_at
                else "nothing was saved yet; it starts again with")
        raise Interrupted(
            f"training was interrupted in epoch {epoch + 1} of {s.epochs}; {then}: cnnlab train --resume {out}"
        ) from None

    if not ctx.is_main:
        distributed.barrier(ctx)  # rank 0 tests the model and writes metrics.json
        return None
    run = _finish(net, dataset, config, out, trainer, device, display)
    distributed.barrier(ctx)
    return run


def _finish(net: torch.nn.Module, dataset: ImageData, config: RunConfig, out: Path, trainer: Trainer,
            device: torch.device, display: Display) -> Run:
    """Evaluate the best weights on the test split (and extra splits), write metrics.json."""
    history, best_epoch = trainer.history, trainer.best_epoch
    load_safetensors(net, out / "model.safetensors", device=str(device))  # the best epoch's, not the last
    model = TrainedModel(net, config.preprocess, dataset.classes, config.train.tta, device=device)
    cached = trainer.feature_logits()  # a head trained on cached features is tested on them too
    test = evaluation_of(*cached, dataset.classes) if cached else evaluate_model(model, dataset.test, "test")
    extra = {name: evaluate_model(model, split, name).accuracy for name, split in dataset.extra.items()}
    metrics = {
        **test.to_dict(),
        "test_accuracy": test.accuracy,
        "extra_accuracy": extra,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_seconds": round(sum(row["seconds"] for row in history), 3),
        "parameters": config.parameters,
    }
    write_json(out / "metrics.json", metrics)
    shifted = "".join(f", {name} {acc:.2%}" for name, acc in extra.items())
    display.print(
        f"test accuracy {test.accuracy:.2%} (best epoch {best_epoch}, {metrics['train_seconds']:.1f} s of "
        f"training{shifted}); results in {out}\n"
    )
    return open_run(out, trust_code=True)  # the model is the one this process was given to train
