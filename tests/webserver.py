"""A real uvicorn server on a free loopback port, in a thread, for the tests that go through HTTP
(test_web.py's chunked upload, test_web_browser.py's Chromium)."""

from __future__ import annotations

import http.client
import threading
import time
from typing import Any


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
