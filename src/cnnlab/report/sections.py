"""The report's sections: what one run's report shows, each a function of the run's `Findings`
(one test pass, the plain network, the data) that computes what to show and renders its template,
templates/sections/KEY.html.j2. page.py lays them out.
"""

from __future__ import annotations

import base64
import copy
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from matplotlib.figure import Figure

from cnnlab.inspect import inside
from cnnlab.views import viz
from cnnlab.inspect.cam import Cam
from cnnlab.data import ImageData, images
from cnnlab.augment_spec import parse_augment
from cnnlab.data.augment import apply, augment, describe, draw
from cnnlab.inspect.evaluate import Evaluation, collect_logits, evaluation_of
from cnnlab.errors import UsageError
from cnnlab.views.formatting import loss, percent
from cnnlab.errors import printable
from cnnlab.models import short_name
from cnnlab.runs.folder import Run
from cnnlab.runs.trained import TrainedModel, resolve_device

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
    model: torch.nn.Module  # the plain network with the best weights on the CPU, for feature maps, filters, CAM

    @property
    def name(self) -> str:
        return short_name(self.run.config.model)


def findings(run: Run, data: ImageData, device: str = "auto") -> Findings:
    """Evaluate a run's best weights on the test split of its dataset `data`."""
    model = run.build_model()  # building checks the model with a traced pass: once is enough
    tested = TrainedModel.from_run(run, resolve_device(device), copy.deepcopy(model))
    logits, labels = collect_logits(tested.judged, tested.loader(data.test))  # (N, classes), (N,)
    return Findings(
        run=run, data=data, evaluation=evaluation_of(logits, labels, run.classes),
        probabilities=logits.softmax(1), losses=F.cross_entropy(logits, labels, reduction="none"), model=model,
    )


def one_per_class(labels: torch.Tensor, count: int) -> list[int]:
    """Indices of the first image of each class, in class order, then the next ones, up to `count`.
    (A folder's test split is sorted by class, so the first `count` images would be of one class.)"""
    chosen = [int((labels == c).nonzero()[0]) for c in labels.unique().tolist()[:count]]
    taken = set(chosen)
    rest = [i for i in range(min(len(labels), 2 * count)) if i not in taken][: count - len(chosen)]
    return chosen + rest


# --- HTML pieces ------------------------------------------------------------------------------------

def _printable(value: object) -> object:
    """What `{{ value }}` writes before escaping: text made printable (a name's bytes that are not UTF-8
    could not be written); Markup, a fragment a template rendered, as it is (escaped once already)."""
    return value if isinstance(value, Markup) else printable(value)


# autoescape: every value a template writes is HTML-escaped unless it is Markup (a fragment rendered here),
# so a class or a run folder named like markup shows as text. StrictUndefined: a misspelt name fails
# instead of writing nothing. trim_blocks, lstrip_blocks: a line of only {% ... %} leaves no blank line.
TEMPLATES = Environment(loader=PackageLoader("cnnlab.report"), autoescape=True, finalize=_printable,
                        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def from_template(name: str, **values: object) -> Markup:
    """The HTML of templates/`name` filled with `values`."""
    return Markup(TEMPLATES.get_template(name).render(**values))


def message(text: str) -> Markup:
    """A section that has nothing to show but a sentence saying why."""
    return from_template("message.html.j2", text=text)


@dataclass(frozen=True)
class Png:
    """An embedded picture, for macros.html.j2's img: the PNG as a data: URI, its alt text, its style class."""

    src: str
    alt: str
    cls: str


def png(data: bytes, alt: str, cls: str) -> Png:
    """PNG bytes, embedded."""
    return Png("data:image/png;base64," + base64.b64encode(data).decode("ascii"), alt, cls)


def figure(fig: Figure, alt: str) -> Png:
    """A matplotlib figure, embedded at most at the page's width."""
    return png(viz.png(fig), alt, "fig")


def picture(image: torch.Tensor, alt: str) -> Png:
    """A uint8 image (C, H, W) as a small PNG, drawn large with square pixels by the style sheet."""
    buffer = io.BytesIO()
    images.to_pil(image).save(buffer, format="PNG")
    return png(buffer.getvalue(), alt, "px")


def captioned(images: torch.Tensor, captions: list[str]) -> list[tuple[Png, str]]:
    """A gallery's items (macros.html.j2): each image, its caption as its alt text too."""
    return [(picture(image, caption), caption) for image, caption in zip(images, captions)]


# --- the sections -----------------------------------------------------------------------------------

def model_section(f: Findings) -> Markup:
    path = f.run.path / "summary.txt"
    text = path.read_text(encoding="utf-8") if path.exists() else "(summary.txt is missing)"
    table, _, formulas = text.partition("How each number comes about:")
    return from_template("sections/model.html.j2", table=table.rstrip(), formulas=formulas.strip())


def training_section(f: Findings) -> Markup:
    history, t = f.run.history, f.run.config.train
    if f.run.config.data.val_images == 0:
        best = "no validation split, so the last epoch is kept"
    else:
        scored = [r for r in history if not math.isnan(r.get("val_loss", math.nan))]
        epoch = (f.run.metrics or {}).get("best_epoch") or (min(scored, key=lambda r: r["val_loss"])["epoch"]
                                                             if scored else "-")
        best = f"best epoch {epoch} (lowest validation loss)"
    settings = (f"{t.optimizer} lr {t.lr:g}, batch {t.batch_size}, {t.epochs} epochs planned, "
                f"{len(history)} run; {best}; {sum(r['seconds'] for r in history):.1f} s of training")
    epochs = [(r["epoch"], loss(r.get("train_loss")), percent(r.get("train_accuracy")), loss(r.get("val_loss")),
               percent(r.get("val_accuracy")), f"{r['seconds']:.1f}") for r in history]
    curves = figure(viz.curves({f.name: history}), "training curves") if history else None
    return from_template("sections/training.html.j2", settings=settings, epochs=epochs, curves=curves,
                         transfer=transfer_text(f.run.config.transfer))


def transfer_text(record: dict | None) -> list[str]:
    """A transfer-learning run's mode, weights and learning rate per parameter group, in words."""
    if not record:
        return []
    mode = {"features": "feature extraction: the backbone frozen throughout, its features computed once per image "
                        "and cached, the head trained on them",
            "fine-tune": f"fine-tuning: the head alone for {record.get('frozen_epochs')} epoch(s) with the backbone "
                         "frozen (batch norm in eval mode), then the whole network",
            "whole": "every parameter trained from the start"}.get(record.get("mode"), str(record.get("mode")))
    rates = ", ".join(f"{group} {lr:g}" for group, lr in (record.get("lr") or {}).items())
    return [f"Transfer learning, {mode}; head {record.get('head')}; learning rate per group: {rates}.",
            *record.get("weights", [])]


def results_section(f: Findings) -> Markup:
    ev = f.evaluation
    rows = [(name, f"{total:,}", percent(acc), f"{0 if acc is None else 100 * acc:.1f}")
            for name, acc, total in zip(ev.classes, ev.per_class_accuracy, map(sum, ev.confusion))]
    return from_template("sections/results.html.j2", accuracy=percent(ev.accuracy), count=f"{ev.count:,}",
                         loss=loss(ev.loss), rows=rows)


def confusion_section(f: Findings) -> Markup:
    ev = f.evaluation
    pairs = sorted(((n, t, p) for t, row in enumerate(ev.confusion) for p, n in enumerate(row) if t != p and n),
                   reverse=True)[:5]
    listed = [(ev.classes[t], ev.classes[p], f"{n:,}", f"{100 * n / max(1, sum(ev.confusion[t])):.1f}")
              for n, t, p in pairs]
    return from_template("sections/confusion.html.j2", matrix=figure(viz.confusion(ev.confusion, ev.classes),
                                                                      "confusion matrix"), pairs=listed)


def losses_section(f: Findings) -> Markup:
    k = min(TOP_LOSSES, len(f.losses))
    if k == 0:
        return message("The test split is empty.")
    classes, test = f.run.classes, f.data.test
    chosen, captions = f.losses.topk(k).indices.tolist(), []
    for i in chosen:
        predicted, true = int(f.probabilities[i].argmax()), int(test.y[i])
        captions.append(f"#{i}: true {classes[true]}, predicted {classes[predicted]} "
                        f"{f.probabilities[i, predicted]:.0%} (true class {f.probabilities[i, true]:.0%}), "
                        f"loss {f.losses[i]:.2f}")
    return from_template("sections/losses.html.j2", items=captioned(test.x[chosen], captions))


def augmentation_section(f: Findings) -> Markup:
    """Each item of the run's --augment spec on the same images, twice, each image captioned with its own
    draw; then the whole spec as training applied it. A run without augmentation shows every item."""
    train = f.data.train
    chosen = one_per_class(train.y, 10)
    x = train.x[chosen]  # (n, C, H, W) uint8
    names = [f.run.classes[int(c)] for c in train.y[chosen]]
    text = f.run.config.train.augment
    spec, note = parse_augment(text), f"as this run trained (--augment {text})"
    trained = bool(spec.items)
    if not trained:  # every item, strong enough to see; one-channel images have no colour to jitter or take away
        demo = "flip, vflip, crop(4), rotation(30), scale(0.25), " + (
            "jitter(0.4, 0.4)" if x.shape[1] == 1 else "jitter(0.4, 0.4, 0.4, 0.1), grayscale(0.5)")
        spec = parse_augment(demo)
        note = f"this run trained without augmentation; shown: what each item of --augment '{spec}' would do"
    generator = torch.Generator().manual_seed(f.run.config.train.seed)
    rows = [("training images", captioned(x, names))]
    for item in spec.items:
        for d in (1, 2):
            params = draw(item, len(x), generator)  # (n, ...): one draw per image
            captions = [f"{name}: {describe(item, p)}" for name, p in zip(names, params)]
            rows.append((f"{item}, draw {d}", captioned(apply(x, item, params), captions)))
    if trained and len(spec.items) > 1:
        rows += [(f"the whole spec, draw {d}", captioned(augment(x, spec, generator), names)) for d in (1, 2)]
    return from_template("sections/augmentation.html.j2", note=note, rows=rows)


def filters_section(f: Findings) -> Markup:
    found = inside.layer_weights(f.model, f.run.input_shape)
    if found is None:
        return message("This model has no convolution layer, nor a first linear layer on the whole image.")
    fig = inside.filter_figure(*found, f.run.input_shape)
    return from_template("sections/filters.html.j2", filters=figure(fig, fig.get_label()))


def most_confident(labels: torch.Tensor, probabilities: torch.Tensor, count: int) -> list[int]:
    """For each of the first `count` classes with test images, the image scored highest for its own class."""
    chosen = []
    for c in labels.unique().tolist()[:count]:
        of_class = (labels == c).nonzero()[:, 0]  # (n_c,)
        chosen.append(int(of_class[probabilities[of_class, c].argmax()]))
    return chosen


def _test_images(f: Findings, chosen: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    raw = f.data.test.x[chosen]  # (n, C, H, W) uint8
    x = f.run.preprocess.from_uint8(raw)  # (n, C, H, W), as the network takes them
    return raw, x


def featuremaps_section(f: Findings) -> Markup:
    convs = inside.conv_layers(f.model)
    if not convs:
        return message("This model has no convolution layers, so it makes no feature maps.")
    if len(f.data.test) == 0:
        return message("The test split is empty.")
    # Lecture 002's way: images that score very high for their category, and what each layer makes of them.
    chosen = most_confident(f.data.test.y, f.probabilities, FEATURE_IMAGES)
    raw, x = _test_images(f, chosen)
    maps = inside.feature_maps(f.model, x, convs)
    kinds = dict(f.model.named_modules())
    images = []
    for n, i in enumerate(chosen):
        c = int(f.data.test.y[i])
        name = f"test image #{i} ({f.run.classes[c]}, {f.probabilities[i, c]:.1%})"
        figures = [inside.featuremap_figure(maps[layer][n], layer, type(kinds[layer]).__name__, f"#{i}",
                                            inside.REPORT_CHANNELS) for layer in convs if layer in maps]
        images.append((name, picture(raw[n], name), [figure(fig, fig.get_label()) for fig in figures]))
    return from_template("sections/featuremaps.html.j2", images=images)


def cam_section(f: Findings) -> Markup:
    if len(f.data.test) == 0:
        return message("The test split is empty.")
    chosen = one_per_class(f.data.test.y, CAM_IMAGES)  # the first of each class: typical images, mistakes included
    raw, x = _test_images(f, chosen)
    try:
        last, cam = inside.evident_cam(f.model, x)
    except UsageError as exc:  # no feature maps larger than 1x1 (an MLP, a convolution over the whole image)
        return message(str(exc))
    names = [f"#{i}" for i in chosen]
    fig = inside.cam_figure(f.model, cam, raw.float() / 255, f.run.classes, true=f.data.test.y[chosen].tolist(),
                            names=names)
    return from_template("sections/cam.html.j2", text=cam_text(last, cam, names), maps=figure(fig, fig.get_label()))


def cam_text(last: Cam, cam: Cam, names: list[str]) -> str:
    """Which layer the maps are at and why, and which are blank (see `inside.evident_cam`)."""
    n, found = len(names), int((~cam.empty).sum())
    why = ("every weighted sum of its feature maps is ≤ 0 (each channel weighed by its gradient averaged "
           "over the positions), and Grad-CAM keeps only the positive part")
    if cam is last:
        text = (f"Grad-CAM at {cam.layer}, the last feature maps before the classifier, for the predicted class: "
                "red where the evidence for it lies.")
        if 2 * found < n:  # most are blank, and no earlier convolution does better
            text += (f" It finds no positive evidence there for {n - found} of {n} images: {why}. No earlier "
                     "convolution finds it for more.")
    else:
        text = (f"Grad-CAM at {cam.layer}, the latest convolution where it finds evidence for {found} of {n} "
                f"images, for the predicted class: red where the evidence for it lies. At {last.layer}, the last "
                f"feature maps before the classifier, it finds none for {int(last.empty.sum())} of {n}: {why}. "
                "This can happen when a linear layer weighs each position of the flattened maps on its own: the "
                "average over the positions hides where the evidence lies.")
    blank = [name for name, empty in zip(names, cam.empty.tolist()) if empty]
    return text + (f" No positive evidence at {cam.layer} for {', '.join(blank)}: those show the image alone."
                   if blank else "")


Section = Callable[[Findings], Markup]
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
