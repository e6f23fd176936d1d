"""Webhook receivers on loopback, for callback URLs in local runs and tests.

    /ok            200
    /missing       404 (any path under /missing too)
    /once          200 the first time, 404 after
    /slow?ms=500   200 after a delay
    /redirect?to=U 302 to U
    /stall         accepts, then never answers (until the server stops)
    /endless       200 with a body that never ends
    /big           200 with a 10 MB body

Every request is counted; `max_in_flight` shows whether two checks ran at the same time.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookHandler(BaseHTTPRequestHandler):
    server: WebhookServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once (no 40 ms delayed-ACK stalls)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self.server.enter(self.path)
        try:
            self._answer()
        except OSError:  # the checker stops reading after its cap and closes: expected
            self.close_connection = True
        finally:
            self.server.leave()

    do_HEAD = do_POST = do_GET

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _answer(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path.startswith("/missing"):
            self._reply(404, b"not here")
        elif url.path == "/once":
            self._reply(200 if self.server.hits.count(self.path) == 1 else 404, b"once")
        elif url.path == "/slow":
            time.sleep(int(query.get("ms", ["500"])[0]) / 1000)
            self._reply(200, b"ok")
        elif url.path == "/redirect":
            self._reply(302, headers={"Location": query.get("to", ["/ok"])[0]})
        elif url.path == "/stall":
            self.server.stop.wait(30)
        elif url.path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            chunk = b"x" * 8192
            deadline = time.monotonic() + 30
            while not self.server.stop.is_set() and time.monotonic() < deadline:
                try:
                    self.wfile.write(chunk)
                except OSError:
                    return
        elif url.path in HOSTILE:
            self._hostile(url.path)
        elif url.path == "/big":
            self._reply(200, b"y" * (10 * 1024 * 1024))
        else:
            self._reply(200, b"ok")

    def _hostile(self, path: str) -> None:
        """Answers that keep a naive client waiting for as long as the server likes."""
        self.close_connection = True
        head, drip = HOSTILE[path]
        self.wfile.write(head)
        self.wfile.flush()
        until = time.monotonic() + 30
        while not self.server.stop.is_set() and time.monotonic() < until:
            self.wfile.write(drip)
            self.wfile.flush()
            self.server.stop.wait(0.05)


# path -> (what is sent first, what is then sent again and again, a little at a time)
HOSTILE = {
    "/trickle-status": (b"", b"H"),
    "/continue-flood": (b"", b"HTTP/1.1 100 Continue\r\n\r\n"),
    "/slow-headers": (b"HTTP/1.1 200 OK\r\n", b"X-Slow: 1\r\n"),
    "/endless-trailers": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n",
        b"X-Trailer: 1\r\n",
    ),
    "/trickle-chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"f"),
}


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, WebhookHandler)
        self.stop = threading.Event()
        self.hits: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def enter(self, path: str) -> None:
        with self._lock:
            self.hits.append(path)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    @property
    def url(self) -> str:
        return f"http://localhost:{self.server_address[1]}"

    def close(self) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()


def start(host: str = "127.0.0.1", port: int = 0) -> WebhookServer:
    server = WebhookServer((host, port))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="webhooks", daemon=True).start()
    return server
