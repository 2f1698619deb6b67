"""What a request must pass before the application sees it: the upload limit, and the Host it names.

`BodyLimit` enforces the upload limit where the bytes arrive: in the ASGI receive loop.

A check of the `Content-Length` header alone is bypassed by a chunked body (which has none), and a
FastAPI dependency runs only after the multipart body was parsed, that is, after all of it was read
and spooled. `BodyLimit` wraps the whole application instead:

- a declared length over the limit is answered 413 before one byte of the body is read;
- otherwise the body is counted as it is received, and the moment the count passes the limit the
  client gets 413, the application sees the client gone (an `http.disconnect`), and whatever it
  answers after that is dropped. At most one network chunk beyond the limit is ever read.

`HostCheck` answers only requests that name this computer as their Host: a page bound to 127.0.0.1
can otherwise still be read by any web site through DNS rebinding (its own name made to point here).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from urllib.parse import urlsplit
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

MEGABYTE = 1024 * 1024
DEFAULT_LIMIT = 10 * MEGABYTE


async def refuse(send: Send, status: int, message: str) -> None:
    """A complete JSON answer {"error": message}; the connection is closed after it, since the rest of
    the request's body was never read."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def too_large(limit: int) -> str:
    return (f"the upload is larger than this server's limit of {limit / MEGABYTE:g} MB; send a smaller image "
            "(or start cnnlab serve with a larger --max-upload-mb)")


class BodyLimit:
    """ASGI middleware: a request whose body passes `limit` bytes is answered 413 (see the module's text)."""

    def __init__(self, app: ASGIApp, limit: int = DEFAULT_LIMIT) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await refuse(send, 400, "the Content-Length header is not a number")
                return
            if int(declared) > self.limit:
                await refuse(send, 413, too_large(self.limit))  # nothing of the body was read
                return
        received = 0
        refused = started = False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    if not started:  # an answer already under way cannot become a 413; it is cut short
                        await refuse(send, 413, too_large(self.limit))
                    return {"type": "http.disconnect"}  # the application stops reading: the client is "gone"
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            if not refused:  # after a 413, the application's own answer (to a body it never got whole) is dropped
                await send(message)

        await self.app(scope, counted, guarded)


def hostname(header: str) -> str | None:
    """The host of a Host header, lower case, without port or IPv6 brackets: "[::1]:8000" -> "::1"."""
    try:
        return urlsplit("//" + header).hostname
    except ValueError:
        return None


class HostCheck:
    """ASGI middleware: a request whose Host header names none of `hosts` gets 400."""

    def __init__(self, app: ASGIApp, hosts: Collection[str]) -> None:
        self.app = app
        self.hosts = {h.lower().strip("[]") for h in hosts}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if hostname(header) not in self.hosts:
                await refuse(send, 400, f"this page answers requests for {', '.join(sorted(self.hosts))} only, not "
                                        f"{header[:80]!r}; open it by one of those names")
                return
        await self.app(scope, receive, send)
