"""The web page's server (cnnlab serve): every page and endpoint with FastAPI's test client, against the
values the library computes; one model per run, concurrent requests, a run in training; the command.
Bad input of every kind is test_web_hostile.py's."""

from __future__ import annotations

import base64
import io
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

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
from cnnlab.web.server import exposure_warning  # noqa: E402
from webserver import LIMIT, RUN, png_bytes  # noqa: E402


# --- pages and JSON -----------------------------------------------------------------------------------

def test_runs_page_and_table(web_client, trained_run):
    page = web_client.get("/")
    assert page.status_code == 200
    assert "Content-Security-Policy" in page.headers
    assert f'href="/runs/{RUN}"' in page.text and "outside" not in page.text
    [row] = web_client.get("/api/runs").json()
    accuracy = cnnlab.open_run(trained_run.path).metrics["test_accuracy"]
    assert row["name"] == RUN and row["model"] == "seed-cnn" and row["dataset"] == "sample"
    assert row["parameters"] == 716_706 and row["test_accuracy"] == accuracy and row["epochs"] == 3
    assert row["status"] == "finished"
    assert f"{100 * accuracy:.2f}%" in page.text


def test_run_page_shows_the_network_with_its_formulas(web_client):
    text = web_client.get(f"/runs/{RUN}").text
    # seed-cnn: conv 3x3 on 1x28x28, max pooling, a second conv, ... each shape on its arrow
    for shape in ("input 1×28×28", "64×26×26", "64×13×13", "128×11×11", "128×5×5", "3200", "200", "10"):
        assert f'<li class="tensor">{shape}</li>' in text
    assert "H_out = floor((28 + 2*0 - 1*(3-1) - 1)/1) + 1 = 26" in text
    assert "params = 64*(1*3*3) + 64 = 640" in text and "params = 3200*200 + 200 = 640,200" in text
    assert text.count('class="layer ') == 10
    assert text.count('class="cm"') == 100  # the confusion matrix's cells are buttons


def test_compare_page_lists_the_runs(web_client, web_runs, trained_run):
    second = web_runs / "second"
    shutil.copytree(trained_run.path, second)
    try:
        text = web_client.get(f"/compare?run={RUN}&run=second").text
        assert text.count('<tr class="compared"') == 2
        accuracy = cnnlab.open_run(trained_run.path).metrics["test_accuracy"]
        assert text.count(f"{100 * accuracy:.2f}%") == 2
        alone = web_client.get(f"/compare?run={RUN}")
        assert alone.status_code == 400 and "two or more" in alone.text
        assert web_client.get(f"/compare?run={RUN}&run=../outside").status_code == 404
    finally:
        shutil.rmtree(second)


def test_history_is_the_runs(web_client, trained_run):
    body = web_client.get(f"/api/history?run={RUN}").json()
    run = cnnlab.open_run(trained_run.path)
    assert [r["epoch"] for r in body["history"]] == [1, 2, 3]
    assert body["history"][2]["train_loss"] == pytest.approx(run.history[2]["train_loss"])
    assert body["running"] is False and body["epochs"] == 3


def test_predict_gives_what_the_library_gives(web_client, trained_run, web_png, tmp_path):
    data, _ = web_png
    body = web_client.post(f"/api/predict?run={RUN}", files={"image": ("shoe.png", data, "image/png")}).json()
    path = tmp_path / "shoe.png"
    path.write_bytes(data)
    [expected] = cnnlab.load(trained_run.path, device="cpu").predict([path], top=5)
    assert [t["class"] for t in body["top"]] == [c for c, _ in expected.top]
    assert [t["probability"] for t in body["top"]] == pytest.approx([p for _, p in expected.top], abs=1e-6)
    assert body["name"] == "shoe.png" and len(body["image"]) == 20


def test_every_layer_for_one_picture(web_client, web_png):
    data, _ = web_png
    image = web_client.post(f"/api/predict?run={RUN}", files={"image": ("x.png", data)}).json()["image"]
    body = web_client.get(f"/api/layers?run={RUN}&image={image}").json()
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


def test_a_clicked_value_is_explained_with_numbers_that_add_up(web_client, web_png):
    data, _ = web_png
    image = web_client.post(f"/api/predict?run={RUN}", files={"image": ("x.png", data)}).json()["image"]
    layers = web_client.get(f"/api/layers?run={RUN}&image={image}").json()["layers"]
    x = web_client.get(f"/api/explain?run={RUN}&image={image}&layer=3&pos=5,4,7").json()
    assert x["how"] == "convolution" and len(x["terms"]) == 64
    assert all(np.array(t["patch"]).shape == (3, 3) for t in x["terms"])
    total = sum(sum(sum(row) for row in t["products"]) for t in x["terms"]) + x["bias"]
    assert total == pytest.approx(x["value"], abs=1e-4) and x["computed"] == pytest.approx(x["value"], abs=1e-4)
    assert layers[3]["range"][0] <= x["value"] <= layers[3]["range"][1]
    pool = web_client.get(f"/api/explain?run={RUN}&image={image}&layer=1&pos=0,0,0").json()
    assert pool["how"] == "max pooling" and pool["value"] == max(max(r) for r in pool["window"])
    test_image = web_client.get(f"/api/explain?run={RUN}&image=test:0&layer=0&pos=0,13,13").json()
    assert test_image["how"] == "convolution" and test_image["computed"] == pytest.approx(test_image["value"], abs=1e-5)
    bad = web_client.get(f"/api/explain?run={RUN}&image={image}&layer=0&pos=64,0,0")
    assert bad.status_code == 400 and "channel" in bad.json()["error"]
    assert web_client.get(f"/api/explain?run={RUN}&image={image}&layer=nope&pos=0").status_code == 404
    assert web_client.get(f"/api/explain?run={RUN}&image=0123&layer=0&pos=0,0,0").status_code == 404


def test_a_confusion_cell_shows_its_test_images(web_client, trained_run):
    confusion = cnnlab.open_run(trained_run.path).metrics["confusion"]
    t, p = max(((t, p) for t in range(10) for p in range(10) if t != p), key=lambda tp: confusion[tp[0]][tp[1]])
    body = web_client.get(f"/api/confusion?run={RUN}&true={t}&predicted={p}").json()
    assert body["count"] == confusion[t][p] > 0
    assert len(body["images"]) == min(confusion[t][p], 48)
    probabilities = [i["probability"] for i in body["images"]]
    assert probabilities == sorted(probabilities, reverse=True)
    data = load_run_data(cnnlab.open_run(trained_run.path))
    assert all(int(data.test.y[i["index"]]) == t for i in body["images"])
    assert web_client.get(f"/api/confusion?run={RUN}&true=10&predicted=0").status_code == 400


def test_the_playground_does_the_lecture_exercise(web_client):
    body = web_client.post("/api/playground", json={"matrix": "1 2 3 4; 5 6 7 8; 9 10 11 12; 13 14 15 16",
                                                "kernel": "1 2; 3 4"}).json()
    assert body["output"] == [[44, 54, 64], [84, 94, 104], [124, 134, 144]]
    assert body["windows"][0]["arithmetic"] == "1x1 + 2x2 + 5x3 + 6x4" and body["windows"][0]["result"] == 44
    assert [s["formula"] for s in body["sizes"]] == ["floor((4 + 2*0 - 1*(2-1) - 1)/1) + 1"] * 2
    pooled = web_client.post("/api/playground", json={"matrix": "1 2 3 4; 5 6 7 8; 9 10 11 12; 13 14 15 16",
                                                  "op": "maxpool", "size": 2, "stride": 1, "padding": 1}).json()
    assert pooled["output"][0][0] == 1 and pooled["output"][4][4] == 16 and len(pooled["output"]) == 5
    assert pooled["padded"][0][0] is None  # max pooling pads with -inf, sent as null
    sobel = web_client.post("/api/playground", json={"matrix": "0 0 9 9; 0 0 9 9; 0 0 9 9", "kernel": "sobel-x"}).json()
    assert sobel["output"] == [[36, 36]]


def test_the_playground_reads_no_file_and_refuses_what_cannot_work(web_client, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("1 2\n3 4\n")
    for field in ("matrix", "kernel"):
        request = {"matrix": "1 2; 3 4", "kernel": "1", field: str(secret)}
        response = web_client.post("/api/playground", json=request)
        assert response.status_code == 400, response.text
    too_big = web_client.post("/api/playground", json={"matrix": "; ".join(["1 " * 65] * 3), "kernel": "1"})
    assert too_big.status_code == 400 and "64x64" in too_big.json()["error"]
    assert web_client.post("/api/playground", json={"matrix": "1 2", "kernel": "1 2 3"}).status_code == 400
    assert web_client.post("/api/playground", json={"matrix": "1 2", "kernel": "1", "stride": 0}).status_code == 400
    assert web_client.post("/api/playground", json={"matrix": "1 2", "op": "rm -rf"}).status_code == 400


def test_the_playground_takes_a_picture(web_client):
    gradient = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # 16 x 16, left dark, right light
    body = web_client.post("/api/playground/picture", files={"image": ("g.png", png_bytes(gradient))},
                       data={"rows": "4"}).json()
    rows = [[int(v) for v in row.split()] for row in body["matrix"].split("; ")]
    assert len(rows) == 4 and len(rows[0]) == 4 and rows[0] == sorted(rows[0]) and rows[0][0] < rows[0][-1]


def test_a_model_is_loaded_once_and_concurrent_requests_agree(web_runs, web_png):
    app = create_app(web_runs, max_upload=LIMIT)
    web_client = TestClient(app)
    catalog = app.app.state.catalog
    data, _ = web_png
    image = web_client.post(f"/api/predict?run={RUN}", files={"image": ("x.png", data)}).json()["image"]

    def layers(_: int) -> str:
        response = web_client.get(f"/api/layers?run={RUN}&image={image}")
        assert response.status_code == 200
        return json.dumps(response.json()["layers"][-1]["bars"])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(layers, range(16)))
    assert len(set(answers)) == 1
    assert catalog.loads == 1


def test_a_run_in_training_is_shown_live(web_client, web_runs):
    folder = web_runs / "fashion" / "seed-cnn"
    metrics = folder / "metrics.json"
    kept = metrics.read_bytes()
    metrics.unlink()
    try:
        with run_lock(folder):  # as training holds it
            assert web_client.get(f"/api/history?run={RUN}").json()["running"] is True
            assert web_client.get("/api/runs").json()[0]["status"] == "running"
        assert web_client.get(f"/api/history?run={RUN}").json()["running"] is False
    finally:
        metrics.write_bytes(kept)


def test_only_the_last_used_models_stay_loaded(web_runs, trained_run, monkeypatch):
    from cnnlab.web import catalog as catalog_module

    monkeypatch.setattr(catalog_module, "KEPT_MODELS", 1)
    root = web_runs.parent / "two-runs"
    for name in ("a", "b"):
        shutil.copytree(trained_run.path, root / name)
    app = create_app(root)
    client = TestClient(app)
    for name in ("a", "a", "b", "a"):
        assert client.get(f"/api/layers?run={name}&image=test:0").status_code == 200
    assert app.app.state.catalog.loads == 3  # a, then b in its place, then a again


def test_a_network_without_feature_maps_shows_its_layers(tmp_path):
    """An MLP has no Grad-CAM; the page says why and shows every layer all the same."""
    cnnlab.train("seed-mlp", "sample", subset=500, epochs=1, out=tmp_path / "runs" / "mlp", verbose=False)
    body = TestClient(create_app(tmp_path / "runs")).get("/api/layers?run=mlp&image=test:0").json()
    assert [(l["name"], l["shape"], l["view"]) for l in body["layers"]] == [
        ("0", [784], "bars"), ("1", [1000], "bars"), ("2", [1000], "bars"), ("3", [10], "bars")]
    assert "feature maps" in body["cam"]["error"] and len(body["top"]) == 5


def test_models_reload_when_training_writes_new_weights(web_runs, web_png):
    app = create_app(web_runs)
    web_client = TestClient(app)
    web_client.get(f"/runs/{RUN}")
    weights = web_runs / "fashion" / "seed-cnn" / "model.safetensors"
    weights.touch()
    web_client.get(f"/runs/{RUN}")
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
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    assert "--port 0: give a port from 1 to 65535" in capsys.readouterr().err


def test_upload_limit_is_checked(capsys, tmp_path):
    assert main(["serve", str(tmp_path), "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb" in capsys.readouterr().err


def test_no_grad_is_left_switched_off(web_client, web_png):
    """Grad-CAM differentiates inside a request; the server must leave autograd as it found it."""
    data, _ = web_png
    image = web_client.post(f"/api/predict?run={RUN}", files={"image": ("x.png", data)}).json()["image"]
    web_client.get(f"/api/layers?run={RUN}&image={image}")
    assert torch.is_grad_enabled()
