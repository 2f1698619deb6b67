"""One self-contained HTML page per run (and one per comparison): every picture embedded as a
data: URI, no script, no server, opens from disk.

The page is a list of sections, each a function of one run's `Findings` that returns HTML. A
run's report stacks them; a comparison's puts each section's runs side by side.
"""

from __future__ import annotations

import base64
import copy
import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from . import __version__, inside, viz
from .data import BatchLoader, ImageData
from .data.augment import augment
from .evaluate import EVAL_BATCH, Evaluation, collect_logits, evaluation_of, load_run_data, resolve_device, run_model
from .errors import RunError, UsageError
from .models import short_name
from .runs import Run, open_run, why_not_written, write_text

TOP_LOSSES = 16
FEATURE_IMAGES = 3
CAM_IMAGES = 6


@dataclass
class Findings:
    """What a report shows of one run, computed once: the test logits and a few chosen images."""

    run: Run
    data: ImageData
    evaluation: Evaluation
    probabilities: torch.Tensor  # (N, classes) on the test split, as the run is judged (TTA included)
    losses: torch.Tensor  # (N,) cross-entropy of each test image
    model: torch.nn.Module  # the plain network with the best weights, for feature maps, filters, CAM

    @property
    def name(self) -> str:
        return short_name(self.run.config["model"])


def findings(run: Run, data: ImageData, device: str = "auto") -> Findings:
    """Evaluate a run's best weights on the test split of its dataset `data`."""
    target = resolve_device(device)
    loader = BatchLoader(data.test, EVAL_BATCH, run.mean, run.std, device=target,
                         channels_last=run.config["train"].get("channels_last", False))
    model = run.build_model()  # building checks the model with a traced pass: once is enough
    logits, labels = collect_logits(run_model(run, target, copy.deepcopy(model)), loader)  # (N, classes), (N,)
    return Findings(
        run=run, data=data, evaluation=evaluation_of(logits, labels, run.classes),
        probabilities=logits.softmax(1), losses=F.cross_entropy(logits, labels, reduction="none"), model=model,
    )


def one_per_class(labels: torch.Tensor, count: int) -> list[int]:
    """Indices of the first image of each class, in class order, then the next ones, up to `count`."""
    first: dict[int, int] = {}
    for i, label in enumerate(labels[: 100 * count].tolist()):
        first.setdefault(label, i)
    chosen = [first[c] for c in sorted(first)][:count]
    taken = set(chosen)
    rest = [i for i in range(min(len(labels), 2 * count)) if i not in taken][: count - len(chosen)]
    return chosen + rest


# --- HTML pieces ------------------------------------------------------------------------------------

def esc(text: object) -> str:
    return html.escape(str(text))


def img(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def figure(fig, alt: str) -> str:
    return img(viz.png(fig), alt, "fig")


def picture(image: torch.Tensor, alt: str) -> str:
    """A uint8 image (C, H, W) as a small PNG, drawn large with square pixels by the style sheet."""
    array = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return img(buffer.getvalue(), alt, "px")


def gallery(items: list[tuple[torch.Tensor, str]]) -> str:
    cells = "".join(f"<figure>{picture(image, caption)}<figcaption>{esc(caption)}</figcaption></figure>"
                    for image, caption in items)
    return f'<div class="gallery">{cells}</div>'


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# --- the sections -----------------------------------------------------------------------------------

def model_section(f: Findings) -> str:
    path = f.run.path / "summary.txt"
    text = path.read_text(encoding="utf-8") if path.exists() else "(summary.txt is missing)"
    table, _, formulas = text.partition("How each number comes about:")
    out = f"<pre>{esc(table.rstrip())}</pre>"
    if formulas.strip():
        out += f"<details><summary>How each number comes about</summary><pre>{esc(formulas.strip())}</pre></details>"
    return out


def training_section(f: Findings) -> str:
    history, t = f.run.history, f.run.config["train"]
    m = f.run.metrics or {}
    settings = (f"{t['optimizer']} lr {t['lr']:g}, batch {t['batch_size']}, {t['epochs']} epochs planned, "
                f"{len(history)} run; best epoch {m.get('best_epoch', '-')} (lowest validation loss); "
                f"{m.get('train_seconds', 0):.1f} s of training")
    if not history:
        return f"<p>{esc(settings)}</p><p>No epoch has finished yet.</p>"
    rows = "".join(
        f"<tr><td>{r['epoch']}</td><td>{r.get('train_loss', float('nan')):.4f}</td>"
        f"<td>{percent(r.get('train_accuracy'))}</td><td>{r.get('val_loss', float('nan')):.4f}</td>"
        f"<td>{percent(r.get('val_accuracy'))}</td><td>{r['seconds']:.1f}</td></tr>" for r in history)
    table = ("<details><summary>Each epoch</summary><table><tr><th>epoch</th><th>train loss</th><th>train acc</th>"
             f"<th>val loss</th><th>val acc</th><th>seconds</th></tr>{rows}</table></details>")
    return f"<p>{esc(settings)}</p>{figure(viz.curves({f.name: history}), 'training curves')}{table}"


def results_section(f: Findings) -> str:
    ev = f.evaluation
    rows = []
    for name, acc, total in zip(ev.classes, ev.per_class_accuracy, map(sum, ev.confusion)):
        bar = f'<span class="bar" style="width:{0 if acc is None else 100 * acc:.1f}%"></span>'
        rows.append(f"<tr><td>{esc(name)}</td><td>{total:,}</td><td>{percent(acc)}</td>"
                    f"<td class='barcell'>{bar}</td></tr>")
    return (f'<p class="big">test accuracy <b>{percent(ev.accuracy)}</b> of {ev.count:,} images '
            f"(loss {ev.loss:.4f})</p><table><tr><th>class</th><th>images</th><th>accuracy</th><th></th></tr>"
            f"{''.join(rows)}</table>")


def confusion_section(f: Findings) -> str:
    ev = f.evaluation
    pairs = sorted(((n, t, p) for t, row in enumerate(ev.confusion) for p, n in enumerate(row) if t != p and n),
                   reverse=True)[:5]
    items = "".join(
        f"<li>{esc(ev.classes[t])} taken for {esc(ev.classes[p])}: {n:,} images "
        f"({100 * n / max(1, sum(ev.confusion[t])):.1f}% of {esc(ev.classes[t])})</li>" for n, t, p in pairs)
    listing = f"<p>Most confused (true → predicted):</p><ol>{items}</ol>" if pairs else "<p>No mistakes.</p>"
    return figure(viz.confusion(ev.confusion, ev.classes), "confusion matrix") + listing


def losses_section(f: Findings) -> str:
    k = min(TOP_LOSSES, len(f.losses))
    if k == 0:
        return "<p>The test split is empty.</p>"
    classes, test = f.run.classes, f.data.test
    items = []
    for i in f.losses.topk(k).indices.tolist():
        predicted, true = int(f.probabilities[i].argmax()), int(test.y[i])
        items.append((test.x[i], f"#{i}: true {classes[true]}, predicted {classes[predicted]} "
                                 f"{f.probabilities[i, predicted]:.0%} (true class {f.probabilities[i, true]:.0%}), "
                                 f"loss {f.losses[i]:.2f}"))
    return "<p>The test images the model was most wrong about (highest loss).</p>" + gallery(items)


def augmentation_section(f: Findings) -> str:
    train = f.data.train
    chosen = one_per_class(train.y, 10)
    x = train.x[chosen]  # (n, C, H, W) uint8
    mode = f.run.config["train"].get("augment", "none")
    note = f"as this run trained (--augment {mode})"
    if mode == "none":
        mode, note = "crop+flip", "this run trained without augmentation; shown: what --augment crop+flip would do"
    generator = torch.Generator().manual_seed(f.run.config["train"].get("seed", 0))
    rows = [("training images", x)] + [(f"augmented, draw {d}", augment(x, mode, generator)) for d in (1, 2)]
    names = [f.run.classes[int(c)] for c in train.y[chosen]]
    out = f"<p>The same training images before and after augmentation, {esc(note)}.</p>"
    for label, batch in rows:
        out += f"<h4>{esc(label)}</h4>" + gallery(list(zip(batch, names)))
    return out


def filters_section(f: Findings) -> str:
    found = inside.layer_weights(f.model, f.run.input_shape)
    if found is None:
        return "<p>This model has no convolution layer, nor a first linear layer on the whole image.</p>"
    fig = inside.filter_figure(*found, f.run.input_shape)
    return figure(fig, fig.axes[0].get_title())


def most_confident(labels: torch.Tensor, probabilities: torch.Tensor, count: int) -> list[int]:
    """For each of the first `count` classes with test images, the image scored highest for its own class."""
    chosen = []
    for c in labels.unique().tolist()[:count]:
        of_class = (labels == c).nonzero()[:, 0]  # (n_c,)
        chosen.append(int(of_class[probabilities[of_class, c].argmax()]))
    return chosen


def _test_images(f: Findings, chosen: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    raw = f.data.test.x[chosen]  # (n, C, H, W) uint8
    x = BatchLoader(f.data.test, 1, f.run.mean, f.run.std).normalize(raw)
    return raw, x


def featuremaps_section(f: Findings) -> str:
    convs = inside.conv_layers(f.model)
    if not convs:
        return "<p>This model has no convolution layers, so it makes no feature maps.</p>"
    # Lecture 002's way: images that score very high for their category, and what each layer makes of them.
    chosen = most_confident(f.data.test.y, f.probabilities, FEATURE_IMAGES)
    raw, x = _test_images(f, chosen)
    maps = inside.feature_maps(f.model, x, convs)
    kinds = dict(f.model.named_modules())
    out = ("<p>Every convolution's output for the test image of each of the first classes that the model "
           "scores highest for its own class.</p>")
    for n, i in enumerate(chosen):
        c = int(f.data.test.y[i])
        name = f"test image #{i} ({f.run.classes[c]}, {f.probabilities[i, c]:.1%})"
        out += f"<h4>{esc(name)}</h4>{picture(raw[n], name)}"
        for layer in convs:
            if layer in maps:
                fig = inside.featuremap_figure(maps[layer][n], layer, type(kinds[layer]).__name__, f"#{i}",
                                               inside.REPORT_CHANNELS)
                out += figure(fig, fig.axes[0].get_title())
    return out


def cam_section(f: Findings) -> str:
    if not inside.conv_layers(f.model):
        return "<p>Grad-CAM needs a convolution layer; this model has none.</p>"
    chosen = one_per_class(f.data.test.y, CAM_IMAGES)  # the first of each class: typical images, mistakes included
    raw, x = _test_images(f, chosen)
    fig, cam = inside.cam_figure(f.model, raw.float() / 255, x, f.run.classes, true=f.data.test.y[chosen].tolist(),
                                 names=[f"#{i}" for i in chosen])
    return (f"<p>Grad-CAM at {esc(cam.layer)}, the last feature maps before the classifier, for the predicted "
            f"class: red where the evidence for it lies.</p>{figure(fig, fig.get_suptitle())}")


Section = Callable[[Findings], str]
SECTIONS: list[tuple[str, str, Section]] = [
    ("model", "Model", model_section),
    ("training", "Training", training_section),
    ("results", "Test results", results_section),
    ("confusion", "Confusion matrix", confusion_section),
    ("losses", "Top losses", losses_section),
    ("augmentation", "Training samples and augmentation", augmentation_section),
    ("filters", "First layer's filters", filters_section),
    ("featuremaps", "Feature maps", featuremaps_section),
    ("cam", "Class-activation maps", cam_section),
]


# --- the pages --------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 0 1.5em 3em; color: #222; }
header { border-bottom: 1px solid #ccc; padding: 1em 0 .5em; }
nav a { margin-right: 1em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
h4 { margin: 1em 0 .3em; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 12px; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { padding: 2px 10px; text-align: right; border-bottom: 1px solid #eee; }
td:first-child, th:first-child { text-align: left; }
.barcell { width: 200px; } .bar { display: inline-block; height: 10px; background: #4a7fb5; }
.big { font-size: 1.2em; }
img.fig { max-width: 100%; height: auto; display: block; margin: .5em 0; }
img.px { width: 84px; height: auto; image-rendering: pixelated; display: block; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { margin: 0; width: 130px; font-size: 11px; }
.cols { display: grid; gap: 2em; }
.cols > div { min-width: 0; }
"""


def page(title: str, intro: str, body: str, sections: list[tuple[str, str]]) -> str:
    nav = "".join(f'<a href="#{key}">{esc(heading)}</a>' for key, heading in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<style>{STYLE}</style></head><body><header><h1>{esc(title)}</h1><p>{intro}</p><nav>{nav}</nav>'
            f"</header>{body}<footer><p>Written by cnnlab {__version__} on "
            f"{datetime.now():%Y-%m-%d %H:%M}.</p></footer></body></html>\n")


def _intro(run: Run) -> str:
    d = run.config["data"]
    return esc(f"{run.config['model']} on {d['dataset']} ({'x'.join(map(str, d['input_shape']))}, "
               f"{len(d['classes'])} classes, {d['train_images']:,} training / {d['val_images']:,} validation / "
               f"{d['test_images']:,} test images), {run.config['parameters']:,} parameters; run folder {run.path}")


def report(run: str | Path | Run, data: ImageData | None = None, out: str | Path | None = None,
           device: str = "auto", data_dir: str | Path | None = None, dataset: str | None = None) -> Path:
    """Write the run's report (default RUN/report.html) and return its path.

    data: the run's dataset if it is already in memory (training has it); otherwise it is read
    again, from `data_dir` or `dataset` (e.g. a moved folder) when given.
    """
    run = run if isinstance(run, Run) else open_run(run)
    f = findings(run, data if data is not None else load_run_data(run, data_dir, dataset=dataset), device)
    body = "".join(f'<section id="{key}"><h2>{esc(heading)}</h2>{section(f)}</section>'
                   for key, heading, section in SECTIONS)
    html_text = page(f"{f.name} on {run.config['data']['dataset']}", _intro(run), body,
                     [(key, heading) for key, heading, _ in SECTIONS])
    return _write(Path(out) if out is not None else run.path / "report.html", html_text)


def compare_report(runs: list[Run | str | Path], out: str | Path, data: ImageData | None = None,
                   device: str = "auto", data_dir: str | Path | None = None, dataset: str | None = None) -> Path:
    """One page with the runs side by side, section by section.

    data: the runs' shared dataset if it is in memory; otherwise each run's is read (as in `report`).
    """
    opened = [r if isinstance(r, Run) else open_run(r) for r in runs]
    if len(opened) < 2:
        raise UsageError("a side-by-side page needs at least two runs")
    all_findings = [findings(r, data if data is not None else load_run_data(r, data_dir, dataset=dataset), device)
                    for r in opened]
    data = all_findings[0].data
    columns = f'<div class="cols" style="grid-template-columns: repeat({len(opened)}, minmax(0, 1fr))">'
    head = "".join(f"<tr><td>{esc(f.name)}</td><td>{f.run.config['parameters']:,}</td>"
                   f"<td>{(f.run.metrics or {}).get('train_seconds', 0):.1f} s</td>"
                   f"<td>{percent(f.evaluation.accuracy)}</td><td>{esc(f.run.path)}</td></tr>" for f in all_findings)
    body = ('<section id="overview"><h2>Side by side</h2><table><tr><th>model</th><th>parameters</th>'
            f"<th>training</th><th>test accuracy</th><th>run folder</th></tr>{head}</table>"
            f"{figure(viz.curves({f.name: f.run.history for f in all_findings}), 'training curves')}</section>")
    for key, heading, section in SECTIONS:
        cells = "".join(f"<div><h3>{esc(f.name)}</h3>{section(f)}</div>" for f in all_findings)
        body += f'<section id="{key}"><h2>{esc(heading)}</h2>{columns}{cells}</div></section>'
    names = " vs ".join(f.name for f in all_findings)
    datasets = sorted({f.data.name for f in all_findings})
    intro = esc(f"{len(opened)} runs on {', '.join(datasets)}, a column each: "
                + "; ".join(f"{f.name} in {f.run.path}" for f in all_findings))
    sections = [("overview", "Side by side")] + [(key, heading) for key, heading, _ in SECTIONS]
    return _write(Path(out), page(f"{names} on {data.name}", intro, body, sections))


def _write(path: Path, text: str) -> Path:
    try:
        write_text(path, text)
    except OSError as exc:
        raise RunError(f"cannot write the report {path}: {why_not_written(path, exc)}") from exc
    return path
