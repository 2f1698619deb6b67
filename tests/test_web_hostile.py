"""The web page against bad input: bodies over the upload limit (a declared length, a chunked body, through
uvicorn too), decompression bombs and broken files, run names that try to leave the runs directory
(`..`, absolute paths, encoded slashes, symlinks), markup in names, a run folder naming code, pages that
would load anything from elsewhere. Each gets a clear answer, and the server goes on."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import socket
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra is missing: pip install -e '.[test]'")
from fastapi.testclient import TestClient  # noqa: E402

import cnnlab  # noqa: E402
from cnnlab.web.app import create_app  # noqa: E402
from cnnlab.web.limits import BodyLimit  # noqa: E402
from webserver import LIMIT, RUN, LiveServer  # noqa: E402


@pytest.fixture(scope="module")
def live_server(web_runs):
    """uvicorn with a 20 kB limit: a request cut off at it has sent less than uvicorn buffers (64 kB) before
    it stops reading, so every byte sent was read when it closes the connection. Unread bytes would make
    its kernel reset the connection, which can drop the 413 before the client reads it (browsers and curl
    see that too for a large upload; uvicorn has no lingering close)."""
    server = LiveServer(create_app(web_runs, max_upload=20_000), 20_000)
    yield server
    server.stop()


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


def test_large_bodies_get_413_and_the_server_goes_on(web_client, web_png):
    big = b"\x89PNG" + b"0" * (LIMIT + 1)
    declared = web_client.post(f"/api/predict?run={RUN}", files={"image": ("big.png", big)})
    assert declared.status_code == 413 and "10 MB" not in declared.json()["error"]

    def chunks():  # no Content-Length: the body is sent chunked
        for _ in range(LIMIT // 10_000 + 5):
            yield b"0" * 10_000

    chunked = web_client.post(f"/api/predict?run={RUN}", content=chunks(),
                          headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert chunked.status_code == 413
    data, _ = web_png
    assert web_client.post(f"/api/predict?run={RUN}", files={"image": ("ok.png", data)}).status_code == 200


@pytest.mark.parametrize("name, data, words", [
    ("empty.png", b"", "empty"),
    ("notes.png", b"these are not pixels", "not an image"),
    ("cut.png", None, "truncated"),
    ("bomb.png", None, "decompression bomb"),
])
def test_broken_and_hostile_images_get_400(web_client, web_png, name, data, words):
    if name == "cut.png":
        data = web_png[0][: len(web_png[0]) // 2]
    if name == "bomb.png":  # 12,000 x 12,000 black pixels: 144 megapixels in about 20 kB
        buffer = io.BytesIO()
        Image.new("1", (12_000, 12_000)).save(buffer, format="PNG")
        data = buffer.getvalue()
        assert len(data) < LIMIT
    response = web_client.post(f"/api/predict?run={RUN}", files={"image": (name, data)})
    assert response.status_code == 400 and words in response.json()["error"], response.text
    assert web_client.get("/api/runs").status_code == 200


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


# --- names that try to leave the runs directory, markup, code ---------------------------------

@pytest.mark.parametrize("name", ["../outside", "..%2Foutside", "%2E%2E/outside", "fashion/../../outside",
                                  "/etc", "%2Fetc", "fashion%2F..%2F..%2Foutside", "fashion\\seed-cnn", "fashion",
                                  ".", "fashion/seed-cnn/", "C:/x"])
def test_run_names_cannot_leave_the_runs_directory(web_client, web_runs, name):
    absolute = str(web_runs.parent / "outside")
    for url in (f"/api/history?run={name}", f"/api/history?run={absolute}", f"/runs/{name}"):
        response = web_client.get(url)
        assert response.status_code == 404, (url, response.status_code)
    assert web_client.get("/static/..%2F..%2Fapp.py").status_code == 404


def test_a_symlinked_run_is_not_served(web_client, web_runs):
    link = web_runs / "linked"
    link.symlink_to(web_runs.parent / "outside", target_is_directory=True)
    inner = web_runs / "fashion" / "inner"
    try:
        inner.symlink_to(web_runs.parent / "outside", target_is_directory=True)
        assert web_client.get("/api/history?run=linked").status_code == 404
        assert web_client.get("/api/history?run=fashion/inner").status_code == 404
        assert [r["name"] for r in web_client.get("/api/runs").json()] == [RUN]
    finally:
        link.unlink()
        inner.unlink()


def test_pages_load_nothing_from_elsewhere(web_client):
    """The page works offline: every script, style sheet and link is this server's own (or a data: picture)."""
    for url in ("/", f"/runs/{RUN}", f"/compare?run={RUN}&run={RUN}", "/playground"):
        text = web_client.get(url).text
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
    web_client = TestClient(create_app(root))
    response = web_client.get("/runs/evil")
    assert response.status_code == 400 and "--trust-code" in response.text
    assert web_client.post("/api/predict?run=evil", files={"image": ("x.png", b"x")}).status_code == 400
    assert not (tmp_path / "ran").exists()


def test_markup_in_names_is_shown_as_text(trained_run, tmp_path):
    root = tmp_path / "runs"
    folder = root / "<b>bold</b>"
    shutil.copytree(trained_run.path, folder)
    config = json.loads((folder / "config.json").read_text())
    config["data"]["classes"][0] = "<script>alert(1)</script>"
    (folder / "config.json").write_text(json.dumps(config))
    web_client = TestClient(create_app(root))
    for url in ("/", "/runs/%3Cb%3Ebold%3C/b%3E"):
        text = web_client.get(url).text
        assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    text = web_client.get("/runs/%3Cb%3Ebold%3C/b%3E").text
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_only_this_computers_names_are_answered(web_runs):
    """Against DNS rebinding: a site whose name points at 127.0.0.1 gets no page and no data."""
    app = create_app(web_runs, hosts={"127.0.0.1", "localhost", "::1"})
    for base in ("http://127.0.0.1:8000", "http://localhost", "http://[::1]:8000"):
        assert TestClient(app, base_url=base).get("/api/runs").status_code == 200, base
    refused = TestClient(app, base_url="http://attacker.example").get("/api/runs")
    assert refused.status_code == 400 and "127.0.0.1" in refused.json()["error"]
    assert TestClient(app, base_url="http://127.0.0.1.attacker.example").get("/").status_code == 400


def test_test_image_numbers_are_ascii_digits(web_client):
    for index in ("%C2%B2", "%D9%A1", "1" * 5000, "-1", "", "2000"):
        response = web_client.get(f"/api/layers?run={RUN}&image=test:{index}")
        assert response.status_code == 404, (index[:10], response.status_code)
    assert web_client.get(f"/api/explain?run={RUN}&image=test:0&layer=0&pos=0,{'9' * 5000}").status_code == 400


def test_uploads_are_only_the_image_formats_cnnlab_reads(web_client):
    """EPS would hand the visitor's PostScript to Ghostscript: it is not even tried."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    response = web_client.post(f"/api/predict?run={RUN}", files={"image": ("x.eps", eps)})
    assert response.status_code == 400 and "JPEG, PNG" in response.json()["error"]
