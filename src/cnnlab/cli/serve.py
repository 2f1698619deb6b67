"""`cnnlab serve`: the web page (cnnlab[web]), added to main.py's parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cnnlab.errors import UsageError

Command = Callable[[str, str, Callable[[argparse.Namespace], None]], argparse.ArgumentParser]


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        from cnnlab.web.server import serve
    except ImportError as exc:  # fastapi, uvicorn or python-multipart missing
        raise UsageError(f"the web page needs cnnlab's web extra ({exc.name} is missing): "
                         "pip install 'cnnlab[web]'") from exc
    serve(args.runs_dir, args.host, args.port, args.data_dir, args.max_upload_mb)


def add_command(command: Command) -> None:
    p = command("serve", "a local web page: your runs, each network layer by layer with a picture through it, "
                         "and the convolution playground", cmd_serve)
    p.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR",
                   help="the folder holding your run folders (default: runs)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--data-dir", default=None, help="where the runs' datasets are, if not where training found them")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted, in MB (default 10)")
