"""One self-contained HTML page per run (and one per comparison): every picture embedded as a
data: URI, no script, no server, opens from disk.

The page is the list of sections in sections.py, each rendered once per run: a run's report
stacks them; a comparison puts each section's runs side by side.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from cnnlab.version import __version__
from cnnlab.views import viz
from cnnlab.data import ImageData
from cnnlab.errors import RunError, UsageError
from cnnlab.inspect.evaluate import load_run_data
from cnnlab.runs.folder import Run, open_run, why_not_written, write_text
from cnnlab.views.formatting import percent
from cnnlab.report.sections import SECTIONS, Findings, esc, figure, findings


STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 0 1.5em 3em; color: #222; }
header { border-bottom: 1px solid #ccc; padding: 1em 0 .5em; }
nav a { margin-right: 1em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
h4 { margin: 1em 0 .3em; }
/* 12 px, smaller on a narrow screen: seed-cnn's summary fits down to 800 px, beyond that it scrolls */
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: clamp(9px, 1.2vw, 12px); }
table { border-collapse: collapse; margin: .5em 0; }
td, th { padding: 2px 10px; text-align: right; border-bottom: 1px solid #eee; }
td:first-child, th:first-child { text-align: left; }
.barcell { width: 200px; } .bar { display: inline-block; height: 10px; background: #4a7fb5; }
.big { font-size: 1.2em; }
img.fig { max-width: 100%; height: auto; display: block; margin: .5em 0; }
img.px { width: 84px; height: auto; image-rendering: pixelated; display: block; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { margin: 0; width: 130px; font-size: 11px; }
.cols { display: grid; gap: 2em; grid-template-columns: repeat(var(--n), minmax(0, 1fr)); }
.cols > div { min-width: 0; }
.cols table { font-size: 13px; } .cols td, .cols th { padding: 2px 6px; } .cols .barcell { width: 25%; }
.cols.stacked { grid-template-columns: minmax(0, 1fr); gap: 0; }
@media (max-width: 900px) { .cols { grid-template-columns: minmax(0, 1fr); }
  body { padding: 0 .8em 2em; } table { font-size: 12px; } td, th { padding: 2px 4px; } }
td.path { overflow-wrap: anywhere; text-align: left; }
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


STACKED = {"model"}  # sections a comparison shows one run above the other rather than side by side
Rendered = list[tuple[str, str, str]]  # (key, heading, html) for each section


def render(f: Findings) -> Rendered:
    """Every section of one run, rendered once (a comparison reuses them)."""
    return [(key, heading, section(f)) for key, heading, section in SECTIONS]


def run_page(f: Findings, rendered: Rendered) -> str:
    body = "".join(f'<section id="{key}"><h2>{esc(heading)}</h2>{html}</section>' for key, heading, html in rendered)
    return page(f"{f.name} on {f.run.config['data']['dataset']}", _intro(f.run), body,
                [(key, heading) for key, heading, _ in rendered])


def labels(all_findings: list[Findings]) -> list[str]:
    """A distinct column name per run: the model's, else the run folder's (two specs are both "spec")."""
    for names in ([f.name for f in all_findings], [f.run.path.name for f in all_findings]):
        if len(set(names)) == len(names):
            return names
    return [f"{f.name} ({i})" for i, f in enumerate(all_findings, 1)]


def comparison_page(all_findings: list[Findings], rendered: list[Rendered]) -> str:
    names = labels(all_findings)
    columns = f'<div class="cols" style="--n: {len(names)}">'
    head = "".join(f"<tr><td>{esc(name)}</td><td>{f.run.config['parameters']:,}</td>"
                   f"<td>{sum(r['seconds'] for r in f.run.history):.1f} s</td>"
                   f"<td>{percent(f.evaluation.accuracy)}</td><td class='path'>{esc(f.run.path)}</td></tr>"
                   for name, f in zip(names, all_findings))
    curves = viz.curves({name: f.run.history for name, f in zip(names, all_findings)})
    body = ('<section id="overview"><h2>Side by side</h2><table><tr><th>run</th><th>parameters</th>'
            f"<th>training</th><th>test accuracy</th><th>run folder</th></tr>{head}</table>"
            f"{figure(curves, 'training curves')}</section>")
    for n, (key, heading, _) in enumerate(rendered[0]):
        cells = "".join(f"<div><h3>{esc(name)}</h3>{sections[n][2]}</div>" for name, sections in zip(names, rendered))
        # The model summaries are wide fixed-width tables: one above the other, each at the page's width.
        layout = '<div class="cols stacked">' if key in STACKED else columns
        body += f'<section id="{key}"><h2>{esc(heading)}</h2>{layout}{cells}</div></section>'
    datasets = ", ".join(sorted({f.data.name for f in all_findings}))
    intro = esc(f"{len(names)} runs on {datasets}, a column each: "
                + "; ".join(f"{name} in {f.run.path}" for name, f in zip(names, all_findings)))
    sections = [("overview", "Side by side")] + [(key, heading) for key, heading, _ in rendered[0]]
    return page(f"{' vs '.join(names)} on {datasets}", intro, body, sections)


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
