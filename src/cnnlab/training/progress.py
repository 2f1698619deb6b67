"""What training shows in the terminal: a progress bar per epoch and a line per epoch, from the loop's events."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from cnnlab.training.trainer import Epoch, Step
from cnnlab.views.formatting import loss, percent


class Display:
    """Prints on rank 0 when `verbose`; silent otherwise. Use as a context manager around the loop."""

    def __init__(self, verbose: bool, epochs: int) -> None:
        self.console = Console(quiet=not verbose, highlight=False, soft_wrap=True)
        self.epochs = epochs
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"), console=self.console, transient=True, disable=not verbose,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> Display:
        self.progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(kind, exc, tb)

    def print(self, text: str, markup: bool = True) -> None:
        self.console.print(text, markup=markup)

    def step(self, event: Step) -> None:
        if self.task is None:  # the epoch's first step (of this process: a resumed epoch starts further on)
            self.task = self.progress.add_task(f"epoch {event.epoch + 1}/{self.epochs}", total=event.steps,
                                               completed=event.step, stats="")
        if event.loss is not None:
            self.progress.update(self.task, completed=event.step + 1,
                                 stats=f"loss {event.loss:.4f} acc {event.accuracy:.2%}")

    def epoch(self, event: Epoch) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        row = event.row
        self.console.print(
            f"epoch {row['epoch']:>3}/{self.epochs}  train loss {loss(row['train_loss'])} "
            f"acc {percent(row['train_accuracy'])}  val loss {loss(row['val_loss'])} "
            f"acc {percent(row['val_accuracy'])}  {row['seconds']:6.1f} s" + ("  [green]best[/]" if event.improved else "")
        )
