"""The training loop proper: a visible `for` loop over epochs and batches that yields what happens.

    for epoch in epochs:
        for x, y in batches:  loss = cross_entropy(model(x), y); backward; step    -> yield Step
        validate                                                                  -> yield Epoch

What to do with the events (show progress, save the best weights, write history.csv and checkpoints,
stop early) is decided by whoever iterates (loop.py's `_fit`), not by the loop. The consumer runs
between two steps, so a checkpoint it asks for is the loop's state at exactly that point, and
stopping is `break`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cnnlab.data import BatchLoader, Split
from cnnlab.data.loader import fits_on
from cnnlab.errors import RunError, TrainingError
from cnnlab.inspect.evaluate import collect_logits, loss_and_accuracy
from cnnlab.runs.config import RunConfig
from cnnlab.runs.folder import save_checkpoint
from cnnlab.runs.trained import EVAL_BATCH, judged
from cnnlab.settings import load_optimizer_state, lr_factor, make_optimizer
from cnnlab.models.pretrained import head_name
from cnnlab.training import distributed, transfer

# The running loss and accuracy are read (a wait for the device) every this many steps, and at an epoch's end.
SYNC_STEPS = 20


@dataclass
class Step:
    """One optimizer step done: `step` of `steps` in epoch `epoch` (from 0)."""

    epoch: int
    step: int
    steps: int
    seconds: float  # of this epoch so far, a resumed part included
    loss: float | None = None  # the epoch's running mean over every rank, read every SYNC_STEPS steps
    accuracy: float | None = None


@dataclass
class Epoch:
    """An epoch done and validated: its history row, and where the run stands."""

    row: dict[str, float]  # epoch, seconds, train/val loss and accuracy, lr (and test_accuracy with watch_test)
    improved: bool  # the lowest validation loss so far (or no validation split)
    best_epoch: int
    bad_epochs: int  # epochs in a row without a better validation loss


class Trainer:
    """The model, optimizer, schedule and loaders of a run, from scratch or from a checkpoint's state."""

    def __init__(self, net: torch.nn.Module, config: RunConfig, fit: Split, val: Split, test: Split, out: Path,
                 device: torch.device, state: dict[str, Any] | None, ctx: distributed.Context,
                 features: dict[str, torch.Tensor] | None = None) -> None:
        """`features`: the frozen backbone's features of "fit", "val" and "test" (transfer.py), when the head
        alone trains on them (--freeze backbone); otherwise the network trains on images."""
        self.s = s = config.train
        self.net, self.out, self.device, self.ctx, self.fit = net, out, device, ctx, fit
        if s.threads or ctx.local_world_size > 1:
            torch.set_num_threads(s.threads or distributed.default_threads(ctx))
        net.to(device)
        if s.channels_last:
            net.to(memory_format=torch.channels_last)
        self.head = head_name(net) if s.transfer != "whole" else None
        self.features = features
        # What trains and is validated: the head on cached features, or the whole network; `net` is what is saved.
        self.trained = net.get_submodule(self.head) if features is not None else net
        self.model = distributed.wrap(self.trained, ctx, device)
        if s.compile:
            self.model = torch.compile(self.model)
        self.optimizer = make_optimizer(self.trained, s, head=self.head if s.transfer == "fine-tune" else None)
        pre = config.preprocess
        if features is not None:
            self.train_loader = transfer.FeatureLoader(features["fit"], fit, s.batch_size, True, s.seed, device)
            self.val_loader = transfer.FeatureLoader(features["val"], val, EVAL_BATCH, device=device)
            self.test_loader = transfer.FeatureLoader(features["test"], test, EVAL_BATCH, device=device)
        else:
            # On a GPU the splits stay there when all of them (only rank 0 validates and tests) fit in a quarter
            # of its free memory: batches are then gathered and augmented there (loader.py).
            kept = [fit, val, test] if ctx.is_main else [fit]
            resident = fits_on(device, sum(split.x.nbytes + split.y.nbytes for split in kept))
            self.train_loader = BatchLoader(fit, s.batch_size, pre, shuffle=True, seed=s.seed, device=device,
                                            augmentation=s.augment, rank=ctx.rank, world_size=ctx.world_size,
                                            resident=resident)
            self.val_loader = BatchLoader(val, EVAL_BATCH, pre, device=device, resident=resident and ctx.is_main)
            self.test_loader = BatchLoader(test, EVAL_BATCH, pre, device=device, resident=resident and ctx.is_main)
        self.total_steps = len(self.train_loader) * s.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.total_steps, s))
        self.history: list[dict[str, float]] = []
        self.best_val, self.best_epoch, self.bad_epochs, self.start, self.start_step = math.inf, 0, 0, 0, 0
        self.resumed = state
        if state is not None:
            self._restore(state)
        self.saved_at = self.point(self.start, self.start_step) if state is not None else None

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.net.load_state_dict(state["model"])
            load_optimizer_state(self.optimizer, self.net, state)  # a pre-split single-group state too
        except (RuntimeError, ValueError, KeyError) as exc:  # a checkpoint of another model, or damaged
            raise RunError(
                f"{self.out / 'checkpoint.pt'} does not fit the run's model ({' '.join(str(exc).split())[:300]}); "
                f"start the run again with the same command and --overwrite"
            ) from exc
        if "scheduler" in state:  # runs from before schedules existed had a constant rate
            self.scheduler.load_state_dict(state["scheduler"])
        for group in self.optimizer.param_groups:  # the rate at this step of the schedule over the (new) epochs
            group["lr"] = group["initial_lr"] * lr_factor(self.scheduler.last_epoch, self.total_steps, self.s)
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.best_val, self.best_epoch = state["best_val_loss"], state["best_epoch"]
        self.bad_epochs, self.start, self.history = state["bad_epochs"], state["epoch"], state["history"]
        self.start_step = state.get("step", 0)  # a checkpoint within epoch start + 1, after this many steps
        if self.start_step >= len(self.train_loader):
            raise RunError(f"{self.out / 'checkpoint.pt'} stands at step {self.start_step} of an epoch of "
                           f"{len(self.train_loader)} steps: it is not this run's; start the run again with --overwrite")

    @staticmethod
    def point(epochs_done: int, step: int) -> str:
        """Where a checkpoint stands, in words."""
        return f"step {step} of epoch {epochs_done + 1}" if step else f"the end of epoch {epochs_done}"

    def checkpoint(self, epochs_done: int, step: int = 0) -> None:
        """Save everything --resume needs to go on bit for bit: after `epochs_done` epochs and `step`
        steps of the next one, with that epoch's running sums and seconds so far."""
        within = {"step": step, "totals": self._totals.cpu(), "epoch_seconds": self._seconds()} if step else {}
        save_checkpoint(
            {
                "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
                "epoch": epochs_done, "best_val_loss": self.best_val, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, **within,
            },
            self.out / "checkpoint.pt",
        )
        self.saved_at = self.point(epochs_done, step)

    def feature_logits(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The head's test logits (N, classes) and labels from the cached features, when it trained on them:
        the whole network's answer without running the backbone over the test images again."""
        if self.features is None:
            return None
        return collect_logits(self.trained, self.test_loader)

    def finite(self) -> bool:
        """Whether this rank's running loss is a number (a diverged state never replaces a good checkpoint)."""
        return math.isfinite(self._totals[0].item())

    def _seconds(self) -> float:
        return self._earlier + time.perf_counter() - self._started

    def run(self, stopped: bool = False) -> Iterator[Step | Epoch]:
        """Train from where the run stands to its last epoch, yielding a Step after every optimizer step
        and an Epoch after every validation. `stopped`: the run had already stopped early (no epochs)."""
        s, ctx, device, model, loader = self.s, self.ctx, self.device, self.model, self.train_loader
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if s.precision == "bf16"
                    else contextlib.nullcontext())
        for epoch in range(self.start, self.start if stopped else s.epochs):
            first = self.start_step if epoch == self.start else 0
            model.train()
            if self.head is not None and self.features is None:  # fine-tuning: is the backbone frozen this epoch?
                transfer.set_frozen(self.net, self.head, transfer.frozen_in(s, epoch))
            loader.set_epoch(epoch, first)
            self._started = time.perf_counter()
            self._totals = torch.zeros(3, device=device)  # loss sum, correct, images: this rank's share
            self._earlier = 0.0  # seconds of this epoch before a resumed checkpoint
            if first:
                self._earlier = self.resumed["epoch_seconds"]
                if ctx.is_main:  # rank 0's share of the sums so far: the others' were not saved
                    self._totals = self.resumed["totals"].to(device)
            for step, (x, y) in enumerate(loader, start=first):
                # The global batch's size: each rank's summed loss is scaled so that the ranks' gradients,
                # averaged by DDP, equal one process's mean over the whole batch (even an uneven last one).
                n_global = min(s.batch_size, len(self.fit) - step * s.batch_size)
                with autocast:
                    logits = model(x)  # (B, classes)
                    loss_sum = F.cross_entropy(logits.float(), y, label_smoothing=s.label_smoothing, reduction="sum")
                self.optimizer.zero_grad(set_to_none=True)
                (loss_sum * (ctx.world_size / n_global)).backward()
                self.optimizer.step()
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used (the head's), for the history
                self.scheduler.step()
                self._totals[0] += loss_sum.detach()
                self._totals[1] += (logits.argmax(1) == y).sum()
                self._totals[2] += len(y)
                event = Step(epoch, step, len(loader), self._seconds())
                if step % SYNC_STEPS == 0 or step == len(loader) - 1:  # .item() waits for the GPU: not every step
                    # Summed over ranks, so that every rank sees a NaN and stops together.
                    loss_now, correct_now, seen_now = distributed.all_sum(self._totals.clone(), ctx).tolist()
                    if not math.isfinite(loss_now):
                        raise TrainingError(
                            f"the loss became {loss_now / seen_now} in epoch {epoch + 1} (batch {step + 1}): "
                            f"training diverged. Lower the learning rate (now --lr {s.lr:g}), e.g. to "
                            f"{s.lr / 10:g}. The best weights so far are kept in {self.out / 'model.safetensors'}."
                        )
                    event.loss, event.accuracy = loss_now / seen_now, correct_now / seen_now
                yield event
            yield self._validate(epoch, self._seconds(), event.loss, event.accuracy, lr)

    def _validate(self, epoch: int, seconds: float, loss: float, accuracy: float, lr: float) -> Epoch:
        row = {"epoch": epoch + 1, "seconds": round(seconds, 3), "train_loss": loss, "train_accuracy": accuracy,
               "lr": lr}
        # Rank 0 validates, and the others take its numbers: the weights are the same on every rank,
        # but batch norm's running statistics are each rank's own, so their validation would differ
        # and they could disagree on the best epoch or on stopping early.
        if self.ctx.is_main:
            row["val_loss"], row["val_accuracy"] = loss_and_accuracy(judged(self.trained, self.s.tta), self.val_loader)
            if self.s.watch_test:  # to see when a recipe reaches an accuracy; outside the timing
                row["test_accuracy"] = loss_and_accuracy(judged(self.trained, self.s.tta), self.test_loader)[1]
        row = distributed.from_main(row, self.ctx)
        self.history.append(row)
        # Keep the weights with the lowest validation loss; without a validation split, the last.
        improved = len(self.val_loader.split) == 0 or row["val_loss"] < self.best_val
        if improved:
            self.best_val, self.best_epoch, self.bad_epochs = row["val_loss"], epoch + 1, 0
        else:
            self.bad_epochs += 1
        return Epoch(row, improved, self.best_epoch, self.bad_epochs)
