"""Train several models with the same data and settings, and put their results side by side.

Lecture 001's point, measured: an MLP and a CNN with about as many weights, trained the same
way on Fashion-MNIST, end up about 3 points apart. `demo` is that comparison on the sample
shipped with cnnlab.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cnnlab.training import distributed
from cnnlab.data import load_dataset
from cnnlab.errors import UsageError
from cnnlab.models import short_name
from cnnlab.runs.folder import Run
from cnnlab.runs.trained import resolve_device
from cnnlab.training.recipes import settings_for
from cnnlab.training.loop import DATA_OPTIONS, train

# The lectures' own settings; on the 8,000-image sample both models train in well under 2 minutes.
DEMO_MODELS = ("seed-mlp", "seed-cnn")
DEMO_SETTINGS = {"epochs": 5, "batch_size": 32, "lr": 1e-3, "optimizer": "adam"}


@dataclass
class Comparison:
    dataset: str
    out: Path
    runs: list[Run]
    report: Path | None = None  # out/report.html: the runs side by side

    def rows(self) -> list[dict[str, Any]]:
        """One row per model: parameters, training time, best epoch and accuracies."""
        rows = []
        for run in self.runs:
            m = run.metrics or {}
            rows.append({
                "model": run.config.model,
                "parameters": run.config.parameters,
                "train_seconds": m.get("train_seconds"),
                "epochs": m.get("epochs_run"),
                "best_epoch": m.get("best_epoch"),
                "val_accuracy": next(
                    (r.get("val_accuracy") for r in run.history if r["epoch"] == m.get("best_epoch")), None
                ),
                "test_accuracy": m.get("test_accuracy"),
                **{f"{name}_accuracy": acc for name, acc in m.get("extra_accuracy", {}).items()},
                "run": str(run.path),
            })
        return rows


def compare(
    models: list[str] | tuple[str, ...],
    dataset: str = "sample",
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
    verbose: bool = True,
    report: bool = True,
    **options: Any,
) -> Comparison | None:
    """Train each of `models` on `dataset` with the same `options` (those of `train`: the data options
    and the settings); runs go to out/<model>, and with `report` each run's report.html and
    out/report.html, the runs side by side.

    Started by torchrun, every rank trains each model with the others in one process group (see
    `train`); rank 0 alone writes and returns the Comparison, the other ranks return None."""
    if not models:
        raise UsageError("name at least one model to compare")
    if len(set(models)) != len(models):
        raise UsageError("each model can appear only once in a comparison")
    data_options = {k: options[k] for k in DATA_OPTIONS if k in options}
    settings = {k: v for k, v in options.items() if k not in DATA_OPTIONS}
    settings_for(settings.get("recipe", "lecture"), dataset, dict(settings))  # checked before loading the data
    data = load_dataset(dataset, **data_options)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in data.name.split("/")[-1])
    out = Path(out) if out is not None else Path("runs") / f"compare-{safe}-{datetime.now():%Y%m%d-%H%M%S}"
    folders: list[str] = []
    for model in models:  # two specs are both "spec": number them
        name = short_name(model)
        folders.append(name if name not in folders else f"{name}-{len(folders) + 1}")
    with distributed.session(resolve_device(device)):
        runs = [
            train(model, data, out=out / folder, overwrite=overwrite, device=device, verbose=verbose,
                  report=report and len(models) == 1, **options)
            for model, folder in zip(models, folders)
        ]
    if any(run is None for run in runs):  # a rank other than 0 under torchrun: rank 0 has the runs
        return None
    page = None
    if report and len(runs) > 1:
        from cnnlab.report.page import after_comparison  # matplotlib is imported only when a report is written

        page = after_comparison(runs, out / "report.html", data, device)
    return Comparison(data.name, out, runs, page)


def demo(out: str | Path = "runs/demo", device: str = "auto", verbose: bool = True,
         report: bool = True) -> Comparison | None:
    """Lecture 001's MLP vs CNN on the Fashion-MNIST sample shipped with cnnlab (None on ranks other than 0)."""
    return compare(DEMO_MODELS, "sample", out=out, overwrite=True, device=device, verbose=verbose, report=report,
                   **DEMO_SETTINGS)
