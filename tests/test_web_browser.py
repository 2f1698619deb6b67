"""The web page in a real browser (Debian's Chromium, driven by Playwright) against a real uvicorn server:
the runs page, a run, an uploaded PNG through the network, a clicked value whose sum equals it, the
playground on lecture 001's exercise, and curves that grow while a run trains. Screenshots go to the
test's temporary folder."""

from __future__ import annotations

import csv
import io
import re
import shutil

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra is missing: pip install -e '.[test]'")

import cnnlab  # noqa: E402
from cnnlab.inspect.evaluate import load_run_data  # noqa: E402
from cnnlab.training.lock import run_lock  # noqa: E402
from cnnlab.web.app import create_app  # noqa: E402
from webserver import LiveServer  # noqa: E402

RUN = "fashion/seed-cnn"
LIVE = "live/seed-cnn"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("web-browser") / "runs"
    shutil.copytree(trained_run.path, root / RUN)
    shutil.copytree(trained_run.path, root / LIVE)
    live = LiveServer(create_app(root), 10 * 2**20)
    live.root = root
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser():
    path = chromium()
    if path is None:
        pytest.skip("no Chromium on this machine (make test installs Debian's chromium where apt-get can run)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[test]'")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh tab whose script errors and failed requests fail the test."""
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    tab.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    yield tab
    tab.close()
    assert not problems, problems


def number(text: str) -> float:
    return float(text.strip().replace("−", "-"))


def test_runs_page_run_page_and_a_picture_through_the_network(server, page, trained_run, tmp_path):
    page.goto(server.url + "/")
    row = page.locator(f'tr[data-run="{RUN}"]')
    assert "seed-cnn" in row.inner_text() and "sample" in row.inner_text()
    page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)

    # Tick both runs and compare them: one table, every run's curves on the same axes.
    assert page.locator("#compare").is_disabled()
    page.locator("input.pick").nth(0).check()
    page.locator("input.pick").nth(1).check()
    page.click("#compare")
    page.wait_for_selector("#curves svg.chart polyline")
    assert page.locator("tr.compared").count() == 2
    assert page.locator("#curves svg.chart").nth(0).locator("polyline").count() == 4  # 2 runs x train, validation
    page.goto(server.url + "/")
    row.locator("a").click()
    page.wait_for_selector("#curves svg.chart")
    assert page.locator("ol.diagram li.layer").count() == 10
    assert page.locator("#epochs tr").count() == 1 + 3  # header + 3 epochs

    pixels = load_run_data(cnnlab.open_run(trained_run.path)).test.x[0, 0].numpy()
    picture = tmp_path / "ankle-boot.png"
    Image.fromarray(pixels).save(picture)
    # A file over the server's limit is refused by the page before it is sent.
    page.set_input_files("#upload-file", files=[{"name": "huge.png", "mimeType": "image/png",
                                                 "buffer": b"\x89PNG" + bytes(server.limit)}])
    page.click("#upload button[type=submit]")
    assert "more than this server's limit of 10 MB" in page.inner_text("#picture-error")
    page.set_input_files("#upload-file", str(picture))
    page.click("#upload button[type=submit]")
    page.wait_for_selector("section.layer-out img.fmap")
    [expected] = cnnlab.load(trained_run.path, device="cpu").predict([picture], top=5)
    tops = page.locator("#top5 tr")
    assert tops.count() == 5
    assert tops.nth(0).locator("td").nth(0).inner_text() == expected.top[0][0]
    assert page.locator('section.layer-out[data-layer="0"] img.fmap').count() == 64
    assert page.locator("section.layer-out .vbar").count() == 1024 + 200 + 200 + 10  # Flatten: its first 1,024 of 3,200

    # Click a value of the second convolution's channel 5 and read the sum the page shows.
    page.locator('section.layer-out[data-layer="3"] img.fmap').nth(5).click(position={"x": 30, "y": 30})
    page.wait_for_selector("#explain:not([hidden]) .term")
    title = page.inner_text("#explain-title")
    channel, row_index, col = (int(v) for v in re.search(r"\[(\d+), (\d+), (\d+)\]", title).groups())
    assert channel == 5
    value, computed = number(page.inner_text("#explain-value")), number(page.inner_text("#explain-computed"))
    sums = [number(t) for t in page.locator("#explain-terms .term-sum").all_inner_texts()]
    bias = number(page.inner_text("#explain-bias"))
    assert len(sums) == 16 and "48 more input channels" in page.inner_text("#explain-terms")
    assert computed == pytest.approx(value, rel=1e-5, abs=1e-5)
    # All 64 channels' sums plus the bias give the value: the page lists 16; the API has all of them.
    api = page.evaluate(f"api('/api/explain?run={RUN}&image=' + current + '&layer=3&pos={channel},{row_index},{col}')")
    assert [t["sum"] for t in api["terms"][:16]] == pytest.approx(sums, rel=1e-5, abs=1e-5)
    assert sum(t["sum"] for t in api["terms"]) + bias == pytest.approx(value, rel=1e-4, abs=1e-4)
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)

    # A confusion cell's test images, and one of them through the network.
    page.locator("button.cm:not([disabled])").nth(1).click()
    page.wait_for_selector("#cell-images img")
    page.locator("#cell-images img").first.click()
    page.wait_for_function("() => document.getElementById('look-name').textContent.startsWith('test image')")


def test_the_playground_gives_the_lectures_numbers(server, page, tmp_path):
    page.goto(server.url + "/playground")
    page.fill("#pg-matrix", "1 2 3 4\n5 6 7 8\n9 10 11 12\n13 14 15 16")
    page.fill("#pg-kernel", "1 2\n3 4")
    page.click("#pg button[type=submit]")
    page.wait_for_selector("#pg-output td")
    cells = [number(t) for t in page.locator("#pg-output td").all_inner_texts()]
    assert cells == [44, 54, 64, 84, 94, 104, 124, 134, 144]
    assert "H_out = floor((4 + 2*0 - 1*(2-1) - 1)/1) + 1 = 3" in page.inner_text("#pg-sizes")
    page.locator("#pg-output td").nth(4).click()
    assert page.inner_text("#pg-window") == "out[1,1] = 6x1 + 7x2 + 10x3 + 11x4 = 94"
    assert page.locator("#pg-input td.in-window").all_inner_texts() == ["6", "7", "10", "11"]
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)

    page.select_option("#pg-op", "maxpool")  # a change recomputes by itself
    page.wait_for_function("() => document.getElementById('pg-step').textContent.startsWith('maxpool')")
    assert [number(t) for t in page.locator("#pg-output td").all_inner_texts()] == [6, 7, 8, 10, 11, 12, 14, 15, 16]


def test_a_training_run_updates_without_a_reload(server, page):
    folder = server.root / LIVE
    (folder / "metrics.json").unlink()
    history = folder / "history.csv"
    rows = list(csv.DictReader(io.StringIO(history.read_text())))
    with open(history, "w", newline="") as f:  # two epochs so far
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:2])
    with run_lock(folder):  # as `cnnlab train` holds it
        page.goto(server.url + f"/runs/{LIVE}")
        page.wait_for_function("() => document.querySelectorAll('#epochs tr').length === 3")
        assert "Training now: epoch 2 of 3" in page.inner_text("#status")
        with open(history, "a", newline="") as f:  # training finishes its third epoch
            csv.DictWriter(f, fieldnames=list(rows[0])).writerow(rows[2])
        page.wait_for_function("() => document.querySelectorAll('#epochs tr').length === 4", timeout=10_000)
        assert "epoch 3 of 3" in page.inner_text("#status")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('finished')", timeout=10_000)
