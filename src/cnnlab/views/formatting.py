"""Results as text: rich tables for the terminal, markdown tables, or JSON.

Each function takes a result object of the library and a format, and returns a string, so the
CLI stays a thin layer and the same text can go into files and tests.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnnlab.teach.arithmetic import shape_text
from cnnlab.errors import UsageError, printable


if TYPE_CHECKING:  # only for annotations: training imports this module to print its banner
    from cnnlab.training.compare import Comparison
    from cnnlab.inspect.evaluate import Evaluation, Prediction
    from cnnlab.inspect.summary import Row, Summary

FORMATS = ("table", "markdown", "json")
Column = tuple[str, str, Callable[[Any], str]]  # (key, header, formatter)


def _missing(value: float | None) -> bool:
    """Whether a number is absent: None, or NaN (a validation metric of a run without validation images)."""
    return value is None or math.isnan(value)


def percent(value: float | None) -> str:
    """0.9312 -> 93.12%; "-" when missing."""
    return "-" if _missing(value) else f"{value:.2%}"


def loss(value: float | None) -> str:
    """A loss to 4 decimals: 0.2345; "-" when missing."""
    return "-" if _missing(value) else f"{value:.4f}"


def integer(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def seconds(value: float | None) -> str:
    """12.3 s; "-" when missing."""
    return "-" if _missing(value) else f"{value:.1f} s"


def plain(value: Any) -> str:
    return "-" if value is None else str(value)


def nbytes(value: int | None) -> str:
    """Bytes in binary units: 512 B, 3.06 KiB, 2.73 MiB, 1.02 GiB."""
    if value is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def count(value: int | None) -> str:
    """A count with its size in words: 843,520 (0.84 M)."""
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value:,} ({value / size:.2f} {unit})"
    return f"{value:,}"


def integer_text(value: str | None) -> str:
    """An already formatted number, right-aligned like the numeric columns."""
    return value or ""


NUMERIC = (percent, loss, integer, seconds, nbytes, integer_text)  # right-aligned columns


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
    t = Table(title=Text(title) if title else None, box=box.SIMPLE_HEAVY, title_justify="left")
    for header, (_, _, f) in zip(headers, columns):
        t.add_column(header, justify="right" if f in NUMERIC else "left")
    for row in cells:
        t.add_row(*map(Text, row))  # Text: a class or file name such as "[red]" is not rich markup
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


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return shape_text(shape) if shape is not None else "-"


def summary_rows(s: Summary, depth: int) -> list[dict[str, Any]]:
    """The summary's rows down to `depth`, as plain values (what the table and JSON show).

    A row shown with its contents below it counts only what is its own, so the column sums to the
    total: nothing for a container, a norm layer's weights for timm's BatchNormAct2d (norm + activation).
    """
    rows = []
    for i, r in enumerate(s.shown(depth), 1):
        expanded = not r.leaf and r.depth < depth
        params, frozen, mult_adds = r.params, r.frozen, r.mult_adds
        if expanded:
            params -= sum(c.params for c in r.children)
            frozen -= sum(c.frozen for c in r.children)
            mult_adds -= sum(c.mult_adds for c in r.children)
        own = not expanded or params > 0
        rows.append({
            "index": i, "name": r.name or s.model, "type": r.kind, "depth": r.depth,
            "output_shape": list(r.out_shape) if r.out_shape is not None else None,
            "window": r.window, "params": params if own else None,
            "frozen": frozen if own else None, "mult_adds": mult_adds if own else None,
            "receptive_field": r.receptive, "jump": r.jump, "output_bytes": r.out_bytes,
            "call": r.call, "formulas": [str(step) for step in r.math.steps] if r.math else [],
        })
    return rows


def _trainable(params: int | None, frozen: int | None) -> str:
    """Whether a row's parameters train: "yes", "no" (all frozen), "640 of 1,280"; "" without parameters."""
    if not params or frozen is None:
        return ""
    return "yes" if not frozen else "no" if frozen == params else f"{params - frozen:,} of {params:,}"


def summary_table(s: Summary, fmt: str = "table", depth: int = 3, explain: bool = False) -> str:
    """The summary as a terminal table, markdown or JSON; `explain` adds every layer's formulas."""
    if depth < 0:
        raise UsageError(f"--depth {depth}: give 0 (the whole model in one row) or more")
    rows = summary_rows(s, depth)
    if fmt == "json":
        return to_json({
            "model": s.model, "input_shape": list(s.input_shape), "batch_size": s.batch_size,
            "output_shape": list(s.output_shape) if s.output_shape is not None else None, "layers": rows,
            "total_params": s.total_params, "trainable_params": s.trainable_params, "frozen_params": s.frozen_params,
            "buffers": s.buffers, "mult_adds": s.mult_adds, "input_bytes": s.input_bytes,
            "param_bytes": s.param_bytes, "buffer_bytes": s.buffer_bytes, "activation_bytes": s.activation_bytes,
            "notes": s.shared, "warnings": s.warnings,
        })
    for row in rows:
        indent = "  " * max(row["depth"] - 1, 0)
        row["layer"] = indent + row["name"] + (f" (call {row['call']})" if row["call"] > 1 else "")
        row["shape"] = _shape_text(tuple(row["output_shape"]) if row["output_shape"] is not None else None)
        row["params_text"] = "" if row["params"] is None else integer(row["params"] or None)
        row["mult_adds_text"] = "" if row["mult_adds"] is None else integer(row["mult_adds"] or None)
        row["trainable"] = _trainable(row["params"], row["frozen"])
    columns: list[Column] = [
        ("index", "#", integer), ("layer", "layer", plain), ("type", "type", plain), ("shape", "output", plain),
        ("window", "kernel /stride pad", plain), ("params_text", "params", integer_text),
        *([("trainable", "trainable", plain)] if s.frozen_params else []),  # marks the frozen layers
        ("mult_adds_text", "mult-adds", integer_text), ("receptive_field", "RF", integer_text),
        ("jump", "jump", integer_text), ("output_bytes", "output memory", nbytes),
    ]
    title = f"{s.model} on {_shape_text(s.input_shape)} inputs (batch of {s.batch_size})"
    footer = _summary_footer(s)
    if fmt == "markdown":
        footer = "\n".join(f"- {line}" for line in footer.splitlines())
    parts = [table(rows, columns, fmt, title=title), footer]
    if explain:
        parts.append(_explanations(s))
    return "\n\n".join(parts)


def _summary_footer(s: Summary) -> str:
    lines = [
        f"Parameters: {count(s.total_params)}: trainable {s.trainable_params:,}, frozen {s.frozen_params:,}",
        f"Mult-adds: {count(s.mult_adds)} per forward pass of {s.batch_size} image{'s' if s.batch_size > 1 else ''}",
        f"Memory: input {nbytes(s.input_bytes)}, parameters {nbytes(s.param_bytes)}, buffers {nbytes(s.buffer_bytes)}, "
        f"layer outputs {nbytes(s.activation_bytes)} (kept for the backward pass when training)",
        f"Output: {_shape_text(s.output_shape)}",
    ]
    if s.buffers:
        lines.insert(1, f"Buffers: {s.buffers:,} values (batch-norm running statistics: state, not parameters)")
    lines += [f"Note: {note}" for note in s.shared]
    lines += [f"Warning: {w}" for w in s.warnings]
    return "\n".join(lines)


def _explanations(s: Summary) -> str:
    """Every layer's output size and parameter count, and each residual addition, as formulas with the
    numbers filled in."""
    blocks = ["How each number comes about:"]
    for r in s.rows:
        name = (r.name or s.model) + (f" (call {r.call})" if r.call > 1 else "")
        if not r.module:
            blocks.append(_sum_explanation(name, r))
            continue
        if r.math is None and not (r.leaf and not r.params and not r.mult_adds and r.in_shape == r.out_shape):
            continue  # a container, or a layer cnnlab has no formulas for
        head = f"{name}  {r.kind}({r.detail})  {_shape_text(r.in_shape)} -> {_shape_text(r.out_shape)}"
        steps = r.math.steps if r.math else []  # an activation cnnlab has no formula for (ReLU6, Hardswish)
        lines = [f"    {step}" for step in steps]
        if not any(step.name == "params" for step in steps):
            lines.append("    no parameters" if lines else "    shape unchanged, no parameters")
        blocks.append("\n".join([head, *lines]))
    return "\n\n".join(blocks)


def _sum_explanation(name: str, r: Row) -> str:
    """A residual addition: what is added, and its receptive field as the wider of the two branches'."""
    shape = _shape_text(r.in_shape)
    values = math.prod(r.in_shape) if r.in_shape else 0
    lines = [f"{name}  add  {shape} + {shape} -> {_shape_text(r.out_shape)}",
             f"    elementwise sum of two {shape} tensors: {values:,} additions per image, no multiplications "
             "(no mult-adds), no parameters"]
    branches = r.branch_receptive
    if r.receptive and r.receptive != "all" and all(b and b != "all" for b in branches):
        lines.append(f"    RF = max({', '.join(branches)}) = {r.receptive}  (the wider of the two branches)")
    elif r.receptive:  # a global or unknown branch has no number to take the larger of
        lines.append(f"    RF = {r.receptive}  (the wider of the two branches: {', '.join(b or '?' for b in branches)})")
    return "\n".join(lines)


def machine_info(facts: dict[str, Any], fmt: str = "table") -> str:
    """`cnnlab info`: versions, device, CPU capability, threads, precision and speed (machine.info)."""
    if fmt == "json":
        return to_json(facts)
    yes_no = {True: "yes", False: "no", None: "cannot tell"}
    onednn = facts["onednn"]
    rows = [
        ("versions", ", ".join(f"{name} {version or '-'}" for name, version in facts["versions"].items())),
        ("platform", f"{facts['platform']} ({facts['machine']})"),
        ("device", facts["device"] + (f"; CUDA: {', '.join(facts['cuda'])}" if facts["cuda"] else "; no CUDA GPU")),
        ("CPU capability", f"{facts['cpu_capability']} (the kernels PyTorch dispatches); native bf16: "
                           f"{yes_no[facts['cpu_bf16']]}"),
        ("oneDNN", f"{onednn['version'] or '-'}, dispatching {onednn['isa'] or 'an ISA it does not name'}"
         + (f" (limited to {onednn['max_cpu_isa']})" if onednn["max_cpu_isa"] else "")),
        ("environment", ", ".join(f"{k}={v}" for k, v in facts["env"].items()) or "-"),
        ("threads", f"{facts['threads']} (inter-op {facts['interop_threads']}) on {facts['cores']} cores"),
        ("precision", f"the fast recipes train in {facts['precision']['auto']} here: {facts['precision']['why']}"),
    ]
    speed = facts.get("fast_cnn_28_images_per_second")
    if speed:
        rows.append(("speed", "fast-cnn-28 training at batch 256: "
                     + ", ".join(f"{n:,} images/s in {p}" for p, n in speed.items())))
    columns: list[Column] = [("what", "", plain), ("value", "", plain)]
    return table([{"what": k, "value": v} for k, v in rows], columns, fmt)
