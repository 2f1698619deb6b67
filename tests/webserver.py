"""What the web page's tests share besides conftest's fixtures: a real uvicorn server on a free loopback port,
in a thread (for the tests that go through HTTP: a chunked upload, Chromium), the run's name, the upload
limit, PNG bytes."""

from __future__ import annotations

import http.client
import io
import threading
import time
from typing import Any

import numpy as np
from PIL import Image

RUN = "fashion/seed-cnn"  # the trained run's name in conftest's web_runs
LIMIT = 200_000  # bytes: web_client's upload limit, small so that the tests send little


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 pixels (H, W) or (H, W, 3) as a PNG file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class LiveServer:
    """Serves an ASGI app at http://127.0.0.1:PORT until `stop()`."""

    def __init__(self, app: Any, limit: int) -> None:
        import uvicorn

        self.limit = limit
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.address = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{self.address[0]}:{self.address[1]}"

    def get(self, path: str) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection(*self.address, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
