"""`cnnlab serve`: the web page on a local address, by uvicorn.

The page is for the person at this computer: it binds 127.0.0.1 unless another address is asked for,
and then it says plainly who else can reach it.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from cnnlab.errors import UsageError
from cnnlab.web.limits import MEGABYTE

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def exposure_warning(host: str) -> str | None:
    """What binding `host` exposes, or None for a loopback address."""
    if is_loopback(host):
        return None
    who = "every network this computer is on" if host in ("0.0.0.0", "::") else f"the network behind {host}"
    return (f"warning: serving on {host}: anyone on {who} can open the page, see your runs' names, models and "
            "test images, and make this computer run the models. The page has no login. Use the default "
            f"{DEFAULT_HOST} unless you mean it.")


def serve(runs_dir: str | Path = "runs", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          data_dir: str | Path | None = None, max_upload_mb: float = 10.0) -> None:
    """Serve the web page for the runs under `runs_dir` until Ctrl-C."""
    import uvicorn

    from cnnlab.web.app import create_app

    if not 0 < max_upload_mb <= 1024:
        raise UsageError(f"--max-upload-mb {max_upload_mb:g}: give more than 0 and at most 1024")
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port}: give a port from 1 to 65535 (8000 by default)")
    # On loopback the page answers only to this computer's own names; on another address the names it is
    # reached by (a LAN address, a host name) cannot be known here, so any goes, and the warning says so.
    hosts = {"127.0.0.1", "localhost", "::1", host} if is_loopback(host) else None
    app = create_app(runs_dir, data_dir, int(max_upload_mb * MEGABYTE), hosts)
    warning = exposure_warning(host)
    if warning:
        print(warning, file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"cnnlab serves {Path(runs_dir).resolve()} at http://{shown}:{port}/ (Ctrl-C stops it)", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    except OSError as exc:  # the port is taken, or the address is not this computer's
        raise UsageError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; try another --port") from exc
