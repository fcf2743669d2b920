"""The trivial app and target, for the runs with 200 and 500 background processes.

``workload.tiny:application`` is a WSGI app that imports nothing;
``workload.tiny:idle`` announces itself (see ``workload.background``) and sleeps.
"""

from __future__ import annotations

import time

from workload.background import announce, process_name


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


def idle() -> None:
    announce(process_name("idle"))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    idle()
