"""One self-contained HTML page per run (and one per comparison): every picture embedded as a
data: URI, no script, no server, opens from disk.

The page is the list of sections in sections.py, each rendered once per run: a run's report
stacks them (templates/run.html.j2); a comparison puts each section's runs side by side
(templates/comparison.html.j2). Both extend templates/page.html.j2: header, contents, style, footer.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from markupsafe import Markup

from cnnlab.version import __version__
from cnnlab.views import viz
from cnnlab.data import ImageData
from cnnlab.errors import RunError, UsageError
from cnnlab.inspect.evaluate import load_run_data
from cnnlab.runs.folder import Run, open_run, why_not_written, write_text
from cnnlab.views.formatting import percent
from cnnlab.report.sections import SECTIONS, Findings, figure, findings, from_template


def page(template: str, title: str, intro: str, contents: list[tuple[str, str]], **values: object) -> str:
    """A whole page from `template` (which extends page.html.j2): `contents` lists its sections' (key, heading)."""
    return from_template(template, title=title, intro=intro, contents=contents, version=__version__,
                         written=f"{datetime.now():%Y-%m-%d %H:%M}", **values)


def _intro(run: Run) -> str:
    d = run.config.data
    return (f"{run.config.model} on {d.dataset} ({'x'.join(map(str, d.input_shape))}, "
            f"{len(d.classes)} classes, {d.train_images:,} training / {d.val_images:,} validation / "
            f"{d.test_images:,} test images), {run.config.parameters:,} parameters; run folder {run.path}")


# Sections a comparison shows one run above the other rather than side by side: the model summaries are wide
# fixed-width tables, each needs the page's width.
STACKED = {"model"}
Rendered = list[tuple[str, str, Markup]]  # (key, heading, html) for each section


def render(f: Findings) -> Rendered:
    """Every section of one run, rendered once (a comparison reuses them)."""
    return [(key, heading, section(f)) for key, heading, section in SECTIONS]


def run_page(f: Findings, rendered: Rendered) -> str:
    """One run's report: its sections one after the other."""
    return page("run.html.j2", f"{f.name} on {f.run.config.data.dataset}", _intro(f.run),
                [(key, heading) for key, heading, _ in rendered], sections=rendered)


def labels(all_findings: list[Findings]) -> list[str]:
    """A distinct column name per run: the model's, else the run folder's (two specs are both "spec")."""
    for names in ([f.name for f in all_findings], [f.run.path.name for f in all_findings]):
        if len(set(names)) == len(names):
            return names
    return [f"{f.name} ({i})" for i, f in enumerate(all_findings, 1)]


def comparison_page(all_findings: list[Findings], rendered: list[Rendered]) -> str:
    """The runs side by side: an overview, then each section with a column per run."""
    names = labels(all_findings)
    runs = [(name, f"{f.run.config.parameters:,}", f"{sum(r['seconds'] for r in f.run.history):.1f} s",
             percent(f.evaluation.accuracy), f.run.path) for name, f in zip(names, all_findings)]
    curves = figure(viz.curves({name: f.run.history for name, f in zip(names, all_findings)}), "training curves")
    sections = [(key, heading, [(name, each[n][2]) for name, each in zip(names, rendered)])
                for n, (key, heading, _) in enumerate(rendered[0])]
    datasets = ", ".join(sorted({f.data.name for f in all_findings}))
    intro = (f"{len(names)} runs on {datasets}, a column each: "
             + "; ".join(f"{name} in {f.run.path}" for name, f in zip(names, all_findings)))
    contents = [("overview", "Side by side")] + [(key, heading) for key, heading, _ in rendered[0]]
    return page("comparison.html.j2", f"{' vs '.join(names)} on {datasets}", intro, contents, runs=runs,
                curves=curves, sections=sections, stacked=STACKED)


def _findings(run: str | Path | Run, data: ImageData | None, device: str, data_dir: str | Path | None,
              dataset: str | None, download: bool) -> Findings:
    run = run if isinstance(run, Run) else open_run(run)
    return findings(run, data if data is not None else load_run_data(run, data_dir, download, dataset), device)


def report(run: str | Path | Run, data: ImageData | None = None, out: str | Path | None = None,
           device: str = "auto", data_dir: str | Path | None = None, dataset: str | None = None,
           download: bool = False) -> Path:
    """Write the run's report (default RUN/report.html) and return its path.

    data: the run's dataset if it is already in memory (training has it); otherwise it is read
    again as `evaluate` reads it (`data_dir`, `dataset` for a moved folder, `download`).
    """
    f = _findings(run, data, device, data_dir, dataset, download)
    return _write(Path(out) if out is not None else f.run.path / "report.html", run_page(f, render(f)))


def compare_report(runs: list[Run | str | Path], out: str | Path, data: ImageData | None = None,
                   device: str = "auto", data_dir: str | Path | None = None, dataset: str | None = None,
                   download: bool = False, each: bool = False) -> Path:
    """One page with the runs side by side, section by section; with `each`, every run's own
    report.html too, from the same rendering.

    data: the runs' shared dataset if it is in memory; otherwise each run's is read (as in `report`).
    """
    if len(runs) < 2:
        raise UsageError("a side-by-side page needs at least two runs")
    all_findings = [_findings(r, data, device, data_dir, dataset, download) for r in runs]
    rendered = [render(f) for f in all_findings]
    if each:
        for f, sections in zip(all_findings, rendered):
            _write(f.run.path / "report.html", run_page(f, sections))
    return _write(Path(out), comparison_page(all_findings, rendered))


def after_training(run: Run, data: ImageData, device: str, verbose: bool) -> None:
    """Write a run's report.html when training ends. The results are saved already, so a failure
    here is a warning that says how to try again, not an error that would hide them."""
    try:
        path = report(run, data, device=device)
    except Exception as exc:  # noqa: BLE001 -- whatever it is, the trained run must not look failed
        _warn(exc, str(run.path))
        return
    if verbose:
        print(f"report: {path}\n")


def after_comparison(runs: list[Run], out: Path, data: ImageData, device: str) -> Path | None:
    """Each run's report.html and out, the runs side by side, when a comparison's training ends
    (a failure is a warning, as in `after_training`)."""
    try:
        return compare_report(runs, out, data, device, each=True)
    except Exception as exc:  # noqa: BLE001
        _warn(exc, " ".join(str(r.path) for r in runs) + f" --out {out}")
        return None


def _warn(exc: Exception, runs: str) -> None:
    print(f"the report was not written ({type(exc).__name__}: {exc}); the results are saved. "
          f"Try again with: cnnlab report {runs}", file=sys.stderr)


def _write(path: Path, text: str) -> Path:
    try:
        write_text(path, text)
    except OSError as exc:
        raise RunError(f"cannot write the report {path}: {why_not_written(path, exc)}") from exc
    return path
