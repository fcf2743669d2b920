"""Just enough of Chromium's DevTools protocol to watch a page live: a
headless Chromium with a debugging port, and a minimal WebSocket client
(RFC 6455 text frames, masked as a client must) to evaluate JavaScript in
the page. Standard library only."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from urllib.parse import urlsplit

from support import live_tree, wait_until

# The network is closed here: without the background-networking flags
# Chromium's own connections are refused many at a time, and slowly.
QUIET_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def end_browser(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """End a Chromium started with ``start_new_session=True``, and every
    process it started: its renderer, GPU and utility processes outlive a
    terminated browser process for a moment, still writing to the profile
    (removing the profile then fails with "Directory not empty")."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    session = {proc.pid}
    for pid in live_tree(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    wait_until(lambda: not live_tree(session), 30, message="chromium's processes to end")


class WebSocket:
    def __init__(self, url: str, timeout: float = 30.0):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the WebSocket handshake")
            head += chunk
        head, _, self.buffer = head.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(f"DevTools refused the WebSocket: {head[:200]!r}")

    def send(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        size = len(data)
        if size < 126:
            header = struct.pack("!BB", 0x81, 0x80 | size)
        elif size < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("DevTools closed the WebSocket")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def receive(self) -> str:
        """The next whole text message (fragments joined; control frames skipped)."""
        message = b""
        while True:
            first, second = self._take(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack("!H", self._take(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self._take(8))[0]
            payload = self._take(size)  # a server never masks
            opcode = first & 0x0F
            if opcode >= 0x8:
                if opcode == 0x8:
                    raise ConnectionError("DevTools closed the WebSocket")
                continue
            message += payload
            if first & 0x80:
                return message.decode()

    def close(self) -> None:
        self.sock.close()


class Browser:
    """A headless Chromium showing one page, for ``evaluate``."""

    def __init__(self, chromium: str, url: str):
        self.profile = tempfile.TemporaryDirectory(prefix="gc-chromium-")
        # its noise goes to a file: a pipe nobody reads would fill and stop it
        self.log_path = os.path.join(self.profile.name, "chromium.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [chromium, *QUIET_FLAGS, "--remote-debugging-port=0",
                 f"--user-data-dir={self.profile.name}", url],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        self.ws: WebSocket | None = None
        self._ids = 0
        try:
            port = self._debugging_port()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
                targets = json.load(r)
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = WebSocket(page["webSocketDebuggerUrl"])
        except BaseException:
            self.close()
            raise

    def _debugging_port(self) -> int:
        # With port 0 Chromium writes the port it chose to DevToolsActivePort
        # in its profile, once it listens.
        marker = os.path.join(self.profile.name, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with open(marker) as f:
                    first = f.readline().strip()
                if first.isdigit():
                    return int(first)
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        with open(self.log_path, errors="replace") as f:
            raise RuntimeError("chromium did not open its debugging port:\n" + f.read()[-3000:])

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        self._ids += 1
        self.ws.send(json.dumps({"id": self._ids, "method": "Runtime.evaluate",
                                 "params": {"expression": expression, "returnByValue": True}}))
        while True:
            reply = json.loads(self.ws.receive())
            if reply.get("id") == self._ids:
                result = reply.get("result", {})
                if "exceptionDetails" in result:
                    raise RuntimeError(f"{expression!r} failed: {result['exceptionDetails']}")
                return result.get("result", {}).get("value")

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        end_browser(self.proc)
        self.profile.cleanup()
