"""A target that hands off to another program with ``os.execv``, as Frappe's
socket.io companion does with node: the companion process becomes
``node wlnode.js``, which serves ``GET /job?token=T&seconds=S`` on
``$WL_NODE_PORT``.

On SIGTERM node closes its listening socket and exits once the requests in
progress have been answered (``server.close``).
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

SCRIPT = Path(__file__).with_name("wlnode.js")


def enqueue(token: str, seconds: float) -> None:
    url = f"http://127.0.0.1:{os.environ['WL_NODE_PORT']}/job?token={token}&seconds={seconds}"
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()


def run_node() -> None:
    node = shutil.which("node") or shutil.which("nodejs")
    # nothing to prepare: the notify socket outlives the exec (node says ready)
    os.execv(node, [node, str(SCRIPT)])
