"""Results as text: rich tables for the terminal, markdown tables, or JSON.

Each function takes a result object of the library and a format, and returns a string, so the
CLI stays a thin layer and the same text can go into files and tests.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from .compare import Comparison
from .evaluate import Evaluation, Prediction

FORMATS = ("table", "markdown", "json")
Column = tuple[str, str, Callable[[Any], str]]  # (key, header, formatter)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def integer(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def plain(value: Any) -> str:
    return "-" if value is None else str(value)


NUMERIC = (percent, integer, seconds)  # right-aligned columns


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], fmt: str = "table", title: str = "") -> str:
    """Render rows as a rich terminal table or a markdown table."""
    cells = [[f(row.get(key)) for key, _, f in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    if fmt == "markdown":
        lines = [f"**{title}**", ""] if title else []
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join("---:" if f in NUMERIC else "---" for _, _, f in columns) + "|")
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)
    t = Table(title=title or None, box=box.SIMPLE_HEAVY, title_justify="left")
    for header, (_, _, f) in zip(headers, columns):
        t.add_column(header, justify="right" if f in NUMERIC else "left")
    for row in cells:
        t.add_row(*row)
    console = Console(file=io.StringIO(), width=200, highlight=False)
    console.print(t)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()).strip("\n")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2)


def comparison(comp: Comparison, fmt: str = "table") -> str:
    rows = comp.rows()
    if fmt == "json":
        return to_json({"dataset": comp.dataset, "out": str(comp.out), "models": rows})
    extra = sorted({k for row in rows for k in row if k.endswith("_accuracy")} - {"val_accuracy", "test_accuracy"})
    columns: list[Column] = [
        ("model", "model", plain),
        ("parameters", "parameters", integer),
        ("train_seconds", "train time", seconds),
        ("epochs", "epochs", integer),
        ("best_epoch", "best epoch", integer),
        ("val_accuracy", "val acc", percent),
        ("test_accuracy", "test acc", percent),
        *[(k, k.removesuffix("_accuracy") + " acc", percent) for k in extra],
    ]
    return table(rows, columns, fmt, title=f"{comp.dataset}: same data, same settings")


def evaluation(ev: Evaluation, fmt: str = "table") -> str:
    if fmt == "json":
        return to_json(ev.to_dict())
    head = f"{ev.split} accuracy: {percent(ev.accuracy)} of {ev.count:,} images (loss {ev.loss:.4f})"
    per_class = table(
        [{"class": c, "images": sum(ev.confusion[i]), "accuracy": a} for i, (c, a) in enumerate(zip(ev.classes, ev.per_class_accuracy))],
        [("class", "class", plain), ("images", "images", integer), ("accuracy", "accuracy", percent)],
        fmt, title="per class",
    )
    short = [c[:11] for c in ev.classes]
    confusion = table(
        [{"true": short[i], **{str(j): n for j, n in enumerate(row)}} for i, row in enumerate(ev.confusion)],
        [("true", "true \\ predicted", plain), *[(str(j), short[j], integer) for j in range(len(short))]],
        fmt, title="confusion matrix (rows: true class, columns: predicted class)",
    )
    return "\n\n".join([head, per_class, confusion])


def predictions(preds: list[Prediction], fmt: str = "table") -> str:
    if fmt == "json":
        return to_json([{"path": p.path, "top": [{"class": c, "probability": v} for c, v in p.top]} for p in preds])
    k = max(len(p.top) for p in preds)
    rows = [{"image": p.path, **{f"top{i}": f"{c} {v:.1%}" for i, (c, v) in enumerate(p.top)}} for p in preds]
    columns: list[Column] = [("image", "image", plain), *[(f"top{i}", f"#{i + 1}", plain) for i in range(k)]]
    return table(rows, columns, fmt)
