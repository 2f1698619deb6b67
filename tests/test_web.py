"""The web page's server (cnnlab serve): every endpoint with FastAPI's test client, against the values the
library computes, and every bad input the issue names: oversized bodies (declared and chunked), bombs and
broken files, run names that try to leave the runs directory, markup in names, concurrent requests."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra is missing: pip install -e '.[test]'")
from fastapi.testclient import TestClient  # noqa: E402

import cnnlab  # noqa: E402
from cnnlab.cli.main import main  # noqa: E402
from cnnlab.inspect.evaluate import load_run_data  # noqa: E402
from cnnlab.training.lock import run_lock  # noqa: E402
from cnnlab.web.app import create_app  # noqa: E402
from cnnlab.web.limits import BodyLimit  # noqa: E402
from cnnlab.web.server import exposure_warning  # noqa: E402
from webserver import LiveServer  # noqa: E402

LIMIT = 200_000  # bytes: a small upload limit, so that the tests send little


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def runs_dir(trained_run, tmp_path_factory) -> Path:
    """A runs directory holding a copy of the session's trained seed-cnn run as "fashion/seed-cnn", and a
    run outside it (for the traversal tests)."""
    root = tmp_path_factory.mktemp("web") / "runs"
    shutil.copytree(trained_run.path, root / "fashion" / "seed-cnn")
    shutil.copytree(trained_run.path, root.parent / "outside")
    return root


@pytest.fixture(scope="module")
def app(runs_dir):
    return create_app(runs_dir, max_upload=LIMIT)


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app)


@pytest.fixture(scope="module")
def live_server(runs_dir):
    """uvicorn with a 20 kB limit: a request cut off at it has sent less than uvicorn buffers (64 kB) before
    it stops reading, so every byte sent was read when it closes the connection. Unread bytes would make
    its kernel reset the connection, which can drop the 413 before the client reads it (browsers and curl
    see that too for a large upload; uvicorn has no lingering close)."""
    server = LiveServer(create_app(runs_dir, max_upload=20_000), 20_000)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def test_png(trained_run) -> tuple[bytes, np.ndarray]:
    """Test image 0 of the run's data as a PNG file's bytes, and its pixels."""
    pixels = load_run_data(cnnlab.open_run(trained_run.path)).test.x[0, 0].numpy()  # (28, 28) uint8
    return png_bytes(pixels), pixels


RUN = "fashion/seed-cnn"


# --- pages and JSON -----------------------------------------------------------------------------------

def test_runs_page_and_table(client, trained_run):
    page = client.get("/")
    assert page.status_code == 200
    assert "Content-Security-Policy" in page.headers
    assert f'href="/runs/{RUN}"' in page.text and "outside" not in page.text
    [row] = client.get("/api/runs").json()
    accuracy = cnnlab.open_run(trained_run.path).metrics["test_accuracy"]
    assert row["name"] == RUN and row["model"] == "seed-cnn" and row["dataset"] == "sample"
    assert row["parameters"] == 716_706 and row["test_accuracy"] == accuracy and row["epochs"] == 3
    assert row["status"] == "finished"
    assert f"{100 * accuracy:.2f}%" in page.text


def test_run_page_shows_the_network_with_its_formulas(client):
    text = client.get(f"/runs/{RUN}").text
    # seed-cnn: conv 3x3 on 1x28x28, max pooling, a second conv, ... each shape on its arrow
    for shape in ("input 1×28×28", "64×26×26", "64×13×13", "128×11×11", "128×5×5", "3200", "200", "10"):
        assert f'<li class="tensor">{shape}</li>' in text
    assert "H_out = floor((28 + 2*0 - 1*(3-1) - 1)/1) + 1 = 26" in text
    assert "params = 64*(1*3*3) + 64 = 640" in text and "params = 3200*200 + 200 = 640,200" in text
    assert text.count('class="layer ') == 10
    assert text.count('class="cm"') == 100  # the confusion matrix's cells are buttons


def test_compare_page_lists_the_runs(client, runs_dir, trained_run):
    second = runs_dir / "second"
    shutil.copytree(trained_run.path, second)
    try:
        text = client.get(f"/compare?run={RUN}&run=second").text
        assert text.count('<tr class="compared"') == 2
        accuracy = cnnlab.open_run(trained_run.path).metrics["test_accuracy"]
        assert text.count(f"{100 * accuracy:.2f}%") == 2
        alone = client.get(f"/compare?run={RUN}")
        assert alone.status_code == 400 and "two or more" in alone.text
        assert client.get(f"/compare?run={RUN}&run=../outside").status_code == 404
    finally:
        shutil.rmtree(second)


def test_history_is_the_runs(client, trained_run):
    body = client.get(f"/api/history?run={RUN}").json()
    run = cnnlab.open_run(trained_run.path)
    assert [r["epoch"] for r in body["history"]] == [1, 2, 3]
    assert body["history"][2]["train_loss"] == pytest.approx(run.history[2]["train_loss"])
    assert body["running"] is False and body["epochs"] == 3


def test_predict_gives_what_the_library_gives(client, trained_run, test_png, tmp_path):
    data, _ = test_png
    body = client.post(f"/api/predict?run={RUN}", files={"image": ("shoe.png", data, "image/png")}).json()
    path = tmp_path / "shoe.png"
    path.write_bytes(data)
    [expected] = cnnlab.load(trained_run.path, device="cpu").predict([path], top=5)
    assert [t["class"] for t in body["top"]] == [c for c, _ in expected.top]
    assert [t["probability"] for t in body["top"]] == pytest.approx([p for _, p in expected.top], abs=1e-6)
    assert body["name"] == "shoe.png" and len(body["image"]) == 20


def test_every_layer_for_one_picture(client, test_png):
    data, _ = test_png
    image = client.post(f"/api/predict?run={RUN}", files={"image": ("x.png", data)}).json()["image"]
    body = client.get(f"/api/layers?run={RUN}&image={image}").json()
    shapes = [(l["name"], l["kind"], l["shape"], l["view"]) for l in body["layers"]]
    assert shapes == [("0", "Conv2d", [64, 26, 26], "maps"), ("1", "MaxPool2d", [64, 13, 13], "maps"),
                      ("2", "ReLU", [64, 13, 13], "maps"), ("3", "Conv2d", [128, 11, 11], "maps"),
                      ("4", "MaxPool2d", [128, 5, 5], "maps"), ("5", "ReLU", [128, 5, 5], "maps"),
                      ("6", "Flatten", [3200], "bars"), ("7", "Linear", [200], "bars"), ("8", "ReLU", [200], "bars"),
                      ("9", "Linear", [10], "bars")]
    conv = body["layers"][0]
    assert len(conv["maps"]) == 64 and conv["hidden"] == 0 and body["layers"][3]["hidden"] == 128 - 64
    first = Image.open(io.BytesIO(base64.b64decode(conv["maps"][0].split(",", 1)[1])))
    assert first.size == (26, 26)
    logits = body["layers"][-1]["bars"]
    top = max(range(10), key=lambda i: logits[i])
    assert body["top"][0]["index"] == top  # the last layer's largest logit is the top class
    assert body["cam"]["picture"].startswith("data:image/png;base64,") and body["cam"]["layer"]


def test_a_clicked_value_is_explained_with_numbers_that_add_up(client, test_png):
    data, _ = test_png
    image = client.post(f"/api/predict?run={RUN}", files={"image": ("x.png", data)}).json()["image"]
    layers = client.get(f"/api/layers?run={RUN}&image={image}").json()["layers"]
    x = client.get(f"/api/explain?run={RUN}&image={image}&layer=3&pos=5,4,7").json()
    assert x["how"] == "convolution" and len(x["terms"]) == 64
    assert all(np.array(t["patch"]).shape == (3, 3) for t in x["terms"])
    total = sum(sum(sum(row) for row in t["products"]) for t in x["terms"]) + x["bias"]
    assert total == pytest.approx(x["value"], abs=1e-4) and x["computed"] == pytest.approx(x["value"], abs=1e-4)
    assert layers[3]["range"][0] <= x["value"] <= layers[3]["range"][1]
    pool = client.get(f"/api/explain?run={RUN}&image={image}&layer=1&pos=0,0,0").json()
    assert pool["how"] == "max pooling" and pool["value"] == max(max(r) for r in pool["window"])
    test_image = client.get(f"/api/explain?run={RUN}&image=test:0&layer=0&pos=0,13,13").json()
    assert test_image["how"] == "convolution" and test_image["computed"] == pytest.approx(test_image["value"], abs=1e-5)
    bad = client.get(f"/api/explain?run={RUN}&image={image}&layer=0&pos=64,0,0")
    assert bad.status_code == 400 and "channel" in bad.json()["error"]
    assert client.get(f"/api/explain?run={RUN}&image={image}&layer=nope&pos=0").status_code == 404
    assert client.get(f"/api/explain?run={RUN}&image=0123&layer=0&pos=0,0,0").status_code == 404


def test_a_confusion_cell_shows_its_test_images(client, trained_run):
    confusion = cnnlab.open_run(trained_run.path).metrics["confusion"]
    t, p = max(((t, p) for t in range(10) for p in range(10) if t != p), key=lambda tp: confusion[tp[0]][tp[1]])
    body = client.get(f"/api/confusion?run={RUN}&true={t}&predicted={p}").json()
    assert body["count"] == confusion[t][p] > 0
    assert len(body["images"]) == min(confusion[t][p], 48)
    probabilities = [i["probability"] for i in body["images"]]
    assert probabilities == sorted(probabilities, reverse=True)
    data = load_run_data(cnnlab.open_run(trained_run.path))
    assert all(int(data.test.y[i["index"]]) == t for i in body["images"])
    assert client.get(f"/api/confusion?run={RUN}&true=10&predicted=0").status_code == 400


def test_the_playground_does_the_lecture_exercise(client):
    body = client.post("/api/playground", json={"matrix": "1 2 3 4; 5 6 7 8; 9 10 11 12; 13 14 15 16",
                                                "kernel": "1 2; 3 4"}).json()
    assert body["output"] == [[44, 54, 64], [84, 94, 104], [124, 134, 144]]
    assert body["windows"][0]["arithmetic"] == "1x1 + 2x2 + 5x3 + 6x4" and body["windows"][0]["result"] == 44
    assert [s["formula"] for s in body["sizes"]] == ["floor((4 + 2*0 - 1*(2-1) - 1)/1) + 1"] * 2
    pooled = client.post("/api/playground", json={"matrix": "1 2 3 4; 5 6 7 8; 9 10 11 12; 13 14 15 16",
                                                  "op": "maxpool", "size": 2, "stride": 1, "padding": 1}).json()
    assert pooled["output"][0][0] == 1 and pooled["output"][4][4] == 16 and len(pooled["output"]) == 5
    assert pooled["padded"][0][0] is None  # max pooling pads with -inf, sent as null
    sobel = client.post("/api/playground", json={"matrix": "0 0 9 9; 0 0 9 9; 0 0 9 9", "kernel": "sobel-x"}).json()
    assert sobel["output"] == [[36, 36]]


def test_the_playground_reads_no_file_and_refuses_what_cannot_work(client, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("1 2\n3 4\n")
    for field in ("matrix", "kernel"):
        request = {"matrix": "1 2; 3 4", "kernel": "1", field: str(secret)}
        response = client.post("/api/playground", json=request)
        assert response.status_code == 400, response.text
    too_big = client.post("/api/playground", json={"matrix": "; ".join(["1 " * 65] * 3), "kernel": "1"})
    assert too_big.status_code == 400 and "64x64" in too_big.json()["error"]
    assert client.post("/api/playground", json={"matrix": "1 2", "kernel": "1 2 3"}).status_code == 400
    assert client.post("/api/playground", json={"matrix": "1 2", "kernel": "1", "stride": 0}).status_code == 400
    assert client.post("/api/playground", json={"matrix": "1 2", "op": "rm -rf"}).status_code == 400


def test_the_playground_takes_a_picture(client):
    gradient = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # 16 x 16, left dark, right light
    body = client.post("/api/playground/picture", files={"image": ("g.png", png_bytes(gradient))},
                       data={"rows": "4"}).json()
    rows = [[int(v) for v in row.split()] for row in body["matrix"].split("; ")]
    assert len(rows) == 4 and len(rows[0]) == 4 and rows[0] == sorted(rows[0]) and rows[0][0] < rows[0][-1]


# --- bad uploads --------------------------------------------------------------------------------------

def test_a_declared_length_over_the_limit_is_refused_before_reading():
    received = []

    async def app(scope, receive, send):  # would read the body; must never be called
        received.append("app")

    async def receive():
        received.append("receive")
        return {"type": "http.request", "body": b"x" * 10, "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/predict",
             "headers": [(b"content-length", str(10**12).encode())]}
    asyncio.run(BodyLimit(app, LIMIT)(scope, receive, send))
    assert received == [] and sent[0]["status"] == 413
    assert b"limit" in sent[1]["body"]


def test_large_bodies_get_413_and_the_server_goes_on(client, test_png):
    big = b"\x89PNG" + b"0" * (LIMIT + 1)
    declared = client.post(f"/api/predict?run={RUN}", files={"image": ("big.png", big)})
    assert declared.status_code == 413 and "10 MB" not in declared.json()["error"]

    def chunks():  # no Content-Length: the body is sent chunked
        for _ in range(LIMIT // 10_000 + 5):
            yield b"0" * 10_000

    chunked = client.post(f"/api/predict?run={RUN}", content=chunks(),
                          headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert chunked.status_code == 413
    data, _ = test_png
    assert client.post(f"/api/predict?run={RUN}", files={"image": ("ok.png", data)}).status_code == 200


@pytest.mark.parametrize("name, data, words", [
    ("empty.png", b"", "empty"),
    ("notes.png", b"these are not pixels", "not an image"),
    ("cut.png", None, "truncated"),
    ("bomb.png", None, "decompression bomb"),
])
def test_broken_and_hostile_images_get_400(client, test_png, name, data, words):
    if name == "cut.png":
        data = test_png[0][: len(test_png[0]) // 2]
    if name == "bomb.png":  # 12,000 x 12,000 black pixels: 144 megapixels in about 20 kB
        buffer = io.BytesIO()
        Image.new("1", (12_000, 12_000)).save(buffer, format="PNG")
        data = buffer.getvalue()
        assert len(data) < LIMIT
    response = client.post(f"/api/predict?run={RUN}", files={"image": (name, data)})
    assert response.status_code == 400 and words in response.json()["error"], response.text
    assert client.get("/api/runs").status_code == 200


def test_real_server_refuses_a_chunked_body_over_the_limit(live_server):
    """Through uvicorn's HTTP parser: a chunked body is cut off at the limit with 413, and the next
    connection is answered."""
    host, port = live_server.address
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"POST /api/predict?run={RUN} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n".encode())
        head = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
        s.sendall(f"{len(head):x}\r\n".encode() + head + b"\r\n")
        for _ in range(live_server.limit // 4096 + 1):  # just past the limit, then wait for the answer
            s.sendall(b"1000\r\n" + b"0" * 4096 + b"\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert live_server.get("/api/runs").status == 200


# --- names that try to leave the runs directory, markup, concurrency ---------------------------------

@pytest.mark.parametrize("name", ["../outside", "..%2Foutside", "%2E%2E/outside", "fashion/../../outside",
                                  "/etc", "%2Fetc", "fashion%2F..%2F..%2Foutside", "fashion\\seed-cnn", "fashion",
                                  ".", "fashion/seed-cnn/", "C:/x"])
def test_run_names_cannot_leave_the_runs_directory(client, runs_dir, name):
    absolute = str(runs_dir.parent / "outside")
    for url in (f"/api/history?run={name}", f"/api/history?run={absolute}", f"/runs/{name}"):
        response = client.get(url)
        assert response.status_code == 404, (url, response.status_code)
    assert client.get("/static/..%2F..%2Fapp.py").status_code == 404


def test_a_symlinked_run_is_not_served(client, runs_dir):
    link = runs_dir / "linked"
    link.symlink_to(runs_dir.parent / "outside", target_is_directory=True)
    inner = runs_dir / "fashion" / "inner"
    try:
        inner.symlink_to(runs_dir.parent / "outside", target_is_directory=True)
        assert client.get("/api/history?run=linked").status_code == 404
        assert client.get("/api/history?run=fashion/inner").status_code == 404
        assert [r["name"] for r in client.get("/api/runs").json()] == [RUN]
    finally:
        link.unlink()
        inner.unlink()


def test_pages_load_nothing_from_elsewhere(client):
    """The page works offline: every script, style sheet and link is this server's own (or a data: picture)."""
    for url in ("/", f"/runs/{RUN}", f"/compare?run={RUN}&run={RUN}", "/playground"):
        text = client.get(url).text
        targets = re.findall(r'(?:src|href)="([^"]*)"', text)
        assert targets and all(t.startswith(("/", "#", "data:")) for t in targets), (url, targets)
    for path in (Path(cnnlab.__file__).parent / "web" / "static").iterdir():
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", path.read_text()), path  # SVG's namespace only


def test_a_run_naming_code_is_not_imported(trained_run, tmp_path, monkeypatch):
    """A run folder whose model is `package.module:attr` is data the page shows, never code it runs."""
    (tmp_path / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nbuild = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    root = tmp_path / "runs"
    shutil.copytree(trained_run.path, root / "evil")
    config = json.loads((root / "evil" / "config.json").read_text())
    config["model"] = "evil:build"
    (root / "evil" / "config.json").write_text(json.dumps(config))
    client = TestClient(create_app(root))
    response = client.get("/runs/evil")
    assert response.status_code == 400 and "--trust-code" in response.text
    assert client.post("/api/predict?run=evil", files={"image": ("x.png", b"x")}).status_code == 400
    assert not (tmp_path / "ran").exists()


def test_markup_in_names_is_shown_as_text(trained_run, tmp_path):
    root = tmp_path / "runs"
    folder = root / "<b>bold</b>"
    shutil.copytree(trained_run.path, folder)
    config = json.loads((folder / "config.json").read_text())
    config["data"]["classes"][0] = "<script>alert(1)</script>"
    (folder / "config.json").write_text(json.dumps(config))
    client = TestClient(create_app(root))
    for url in ("/", "/runs/%3Cb%3Ebold%3C/b%3E"):
        text = client.get(url).text
        assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    text = client.get("/runs/%3Cb%3Ebold%3C/b%3E").text
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_a_model_is_loaded_once_and_concurrent_requests_agree(runs_dir, test_png):
    app = create_app(runs_dir, max_upload=LIMIT)
    client = TestClient(app)
    catalog = app.app.state.catalog
    data, _ = test_png
    image = client.post(f"/api/predict?run={RUN}", files={"image": ("x.png", data)}).json()["image"]

    def layers(_: int) -> str:
        response = client.get(f"/api/layers?run={RUN}&image={image}")
        assert response.status_code == 200
        return json.dumps(response.json()["layers"][-1]["bars"])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(layers, range(16)))
    assert len(set(answers)) == 1
    assert catalog.loads == 1


def test_a_run_in_training_is_shown_live(client, runs_dir):
    folder = runs_dir / "fashion" / "seed-cnn"
    metrics = folder / "metrics.json"
    kept = metrics.read_bytes()
    metrics.unlink()
    try:
        with run_lock(folder):  # as training holds it
            assert client.get(f"/api/history?run={RUN}").json()["running"] is True
            assert client.get("/api/runs").json()[0]["status"] == "running"
        assert client.get(f"/api/history?run={RUN}").json()["running"] is False
    finally:
        metrics.write_bytes(kept)


def test_models_reload_when_training_writes_new_weights(runs_dir, test_png):
    app = create_app(runs_dir)
    client = TestClient(app)
    client.get(f"/runs/{RUN}")
    weights = runs_dir / "fashion" / "seed-cnn" / "model.safetensors"
    weights.touch()
    client.get(f"/runs/{RUN}")
    assert app.app.state.catalog.loads == 2


# --- the command ----------------------------------------------------------------------------------------

def test_only_loopback_is_served_without_a_warning():
    assert exposure_warning("127.0.0.1") is None and exposure_warning("::1") is None
    assert exposure_warning("localhost") is None
    assert "anyone on every network" in exposure_warning("0.0.0.0")
    assert "no login" in exposure_warning("192.168.1.5")


def test_serve_prints_its_address_and_warns_off_loopback(monkeypatch, capsys, tmp_path):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: served.append((host, port)))
    assert main(["serve", str(tmp_path), "--port", "8123"]) == 0
    out, err = capsys.readouterr()
    assert served == [("127.0.0.1", 8123)] and "http://127.0.0.1:8123/" in out and err == ""
    assert main(["serve", str(tmp_path), "--host", "0.0.0.0"]) == 0
    out, err = capsys.readouterr()
    assert served[-1] == ("0.0.0.0", 8000) and "warning: serving on 0.0.0.0" in err and "no login" in err


def test_serve_without_the_web_extra_says_how_to_get_it(monkeypatch, capsys, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "cnnlab.web.server", None)  # as if fastapi could not be imported
    assert main(["serve", str(tmp_path)]) == 2
    assert "pip install 'cnnlab[web]'" in capsys.readouterr().err


def test_serve_refuses_a_missing_folder(capsys, tmp_path):
    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_upload_limit_is_checked(capsys, tmp_path):
    assert main(["serve", str(tmp_path), "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb" in capsys.readouterr().err


def test_no_grad_is_left_switched_off(client, test_png):
    """Grad-CAM differentiates inside a request; the server must leave autograd as it found it."""
    data, _ = test_png
    image = client.post(f"/api/predict?run={RUN}", files={"image": ("x.png", data)}).json()["image"]
    client.get(f"/api/layers?run={RUN}&image={image}")
    assert torch.is_grad_enabled()
