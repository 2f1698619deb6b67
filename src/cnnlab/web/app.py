"""The web page's routes: HTML pages (Jinja2, autoescaped) and the JSON their JavaScript asks for.

    /                        the runs: sortable, pick two or more to compare
    /runs/NAME               a run: its network layer by layer, curves (live while it trains), per-class
                             accuracy and the confusion matrix, a picture through the network
    /compare?run=A&run=B     runs side by side
    /playground              convolution and pooling by hand, on any matrix and kernel

Each route is thin: it finds the run through the `Catalog` and hands the work to cnnlab's library.
Routes are plain functions, so FastAPI runs them on its thread pool and a slow model blocks no other
request. A cnnlab error becomes 400 with its message (404 for a missing run or picture).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader

from cnnlab.data.images import Blob
from cnnlab.errors import Error, UsageError
from cnnlab.inspect.explain import explain, layer_outputs
from cnnlab.runs.folder import no_nan
from cnnlab.version import __version__
from cnnlab.web import payloads
from cnnlab.web.catalog import Catalog, NotFound
from cnnlab.web.limits import DEFAULT_LIMIT, BodyLimit, HostCheck

TEMPLATES = Environment(loader=PackageLoader("cnnlab.web"), autoescape=True)
STATIC = Path(__file__).parent / "static"
CONFUSION_IMAGES = 48  # test images shown for one cell of the confusion matrix


def reply(value: Any, status: int = 200) -> JSONResponse:
    """JSON, with NaN and infinities (which JSON has no words for) as null."""
    return JSONResponse(no_nan(value), status_code=status)


# Scripts only from this server's /static, pictures also as data: URIs, nothing from elsewhere: should a
# name ever slip past the escaping, the browser still runs none of it.
POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
          "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def page(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(version=__version__, **values)
    return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": POLICY,
                                                           "X-Content-Type-Options": "nosniff"})


def uploaded(file: UploadFile) -> Blob:
    """An upload's bytes (already within the size limit: limits.BodyLimit counted them on arrival)."""
    return Blob(Path(file.filename or "upload").name[:100] or "upload", file.file.read())


def create_app(runs_dir: str | Path = "runs", data_dir: str | Path | None = None,
               max_upload: int = DEFAULT_LIMIT, hosts: Collection[str] | None = None) -> BodyLimit | HostCheck:
    """The web page for the run folders under `runs_dir`, as an ASGI application (uvicorn runs it).

    data_dir: where to read the runs' test images if not where each run found them.
    max_upload: the most bytes a request's body may have (413 beyond, counted as they arrive).
    hosts: the names a request's Host header may give (None: any), against DNS rebinding."""
    catalog = Catalog(runs_dir, data_dir)
    app = FastAPI(title="cnnlab", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.catalog = catalog
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(Error)
    def cnnlab_error(request: Request, exc: Error) -> JSONResponse | HTMLResponse:
        status = 404 if isinstance(exc, NotFound) else 400
        if request.url.path.startswith("/api/"):
            return reply({"error": str(exc)}, status)
        return page("message.html.j2", status, title="Not here" if status == 404 else "Cannot show this",
                    message=str(exc))

    # --- pages ---------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def runs_page() -> HTMLResponse:
        return page("runs.html.j2", title="Runs", root=str(catalog.root), runs=catalog.table())

    @app.get("/runs/{name:path}", response_class=HTMLResponse)
    def run_page(name: str) -> HTMLResponse:
        run = catalog.run(name)
        metrics = run.metrics or {}
        diagram = []
        if (run.path / "model.safetensors").exists():
            diagram = payloads.diagram(catalog.summary(catalog.loaded(name)))
        return page("run.html.j2", title=name, name=name, run=run, metrics=metrics, diagram=diagram,
                    running=catalog.running(name), classes=run.classes, max_upload=max_upload)

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(run: list[str] = Query(default=[])) -> HTMLResponse:
        if len(run) < 2:
            raise UsageError("pick two or more runs to compare on the runs page")
        return page("compare.html.j2", title="Comparison", runs=[(name, catalog.run(name)) for name in run])

    @app.get("/playground", response_class=HTMLResponse)
    def playground_page() -> HTMLResponse:
        return page("playground.html.j2", title="Convolution playground", kernels=payloads.kernels(),
                    max_upload=max_upload)

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    # --- JSON ----------------------------------------------------------------------------------

    @app.get("/api/runs")
    def runs() -> JSONResponse:
        return reply(catalog.table())

    @app.get("/api/history")
    def history(run: str) -> JSONResponse:
        opened = catalog.run(run)
        return reply({"history": opened.history, "running": catalog.running(run), "metrics": opened.metrics,
                      "epochs": opened.config.train.epochs})

    @app.post("/api/predict")
    def predict(run: str, image: UploadFile = File(...)) -> JSONResponse:
        loaded = catalog.loaded(run)
        blob = uploaded(image)
        shown = loaded.model.preprocess.load([blob])  # (1, C, H, W): decoding errors are 400s, before the lock
        key = catalog.keep(run, blob, shown)
        with loaded.lock:
            probabilities = loaded.model.logits(shown).softmax(1)[0]  # (classes,)
        return reply({"image": key, "name": blob.name, "top": payloads.top_classes(probabilities, loaded.model.classes)})

    @app.get("/api/layers")
    def layers(run: str, image: str) -> JSONResponse:
        loaded = catalog.loaded(run)
        shown, label = catalog.picture(run, loaded, image)
        model = loaded.model
        x = model.preprocess.normalize(shown)  # (1, C, H, W)
        with loaded.lock:
            probabilities = model.logits(shown).softmax(1)[0]  # (classes,)
            records = layer_outputs(model.net, x)
            cam = payloads.cam_view(model, shown, x)
        return reply({"image": image, "name": label, "picture": payloads.picture_uri(shown[0]),
                      "top": payloads.top_classes(probabilities, model.classes),
                      "layers": [payloads.layer_view(r) for r in records], "cam": cam})

    @app.get("/api/explain")
    def explain_value(run: str, image: str, layer: str, pos: str) -> JSONResponse:
        loaded = catalog.loaded(run)
        shown, _ = catalog.picture(run, loaded, image)
        if not re.fullmatch(r"[0-9]{1,9}(,[0-9]{1,9}){0,3}", pos):
            raise UsageError(f"pos must be whole numbers separated by commas (channel,row,column), not {pos[:40]!r}")
        position = [int(p) for p in pos.split(",")]
        with loaded.lock:  # explain may call the layer itself, which must meet no other request's hooks
            records = {r.name: r for r in layer_outputs(loaded.model.net, loaded.model.preprocess.normalize(shown))}
            if layer not in records:
                raise NotFound(f"the network has no layer {layer[:80]!r} that gives an output")
            module = loaded.model.net.get_submodule(layer.split("#")[0])
            explained = explain(module, records[layer], position)
        return reply(explained.to_dict())

    @app.get("/api/confusion")
    def confusion(run: str, true: int, predicted: int) -> JSONResponse:
        loaded = catalog.loaded(run)
        classes = loaded.model.classes
        if not (0 <= true < len(classes) and 0 <= predicted < len(classes)):
            raise UsageError(f"classes are numbered 0 to {len(classes) - 1}")
        test = catalog.test_images(loaded)
        chosen = ((test["y"] == true) & (test["predicted"] == predicted)).nonzero().flatten()
        confidence = test["probabilities"][chosen, predicted]
        order = chosen[confidence.argsort(descending=True)][:CONFUSION_IMAGES]
        shown = [{"index": int(i), "image": f"test:{int(i)}", "probability": float(test["probabilities"][i, predicted]),
                  "picture": payloads.picture_uri(test["x"][i].float().div(255))} for i in order]
        return reply({"true": classes[true], "predicted": classes[predicted], "count": len(chosen), "images": shown})

    @app.get("/api/kernels")
    def kernels() -> JSONResponse:
        return reply(payloads.kernels())

    @app.post("/api/playground")
    def playground(request: dict[str, Any]) -> JSONResponse:
        return reply(payloads.playground(request))

    @app.post("/api/playground/picture")
    def playground_picture(image: UploadFile = File(...), rows: int = Form(8)) -> JSONResponse:
        return reply(payloads.matrix_from_picture(uploaded(image), rows))

    limited = BodyLimit(app, max_upload)
    return HostCheck(limited, hosts) if hosts is not None else limited
