"""The HTTP server on ``metrics_port``: ``/metrics`` (Prometheus text) and
``/`` (the status page, ``ops.status_page``). It runs in its own daemon
threads, off the event loop, as prometheus-client's server did; everything
it reads is copied from plain Python tables in one step (``ops.metrics``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("ringkv.metrics")


def serve(addr: str, port: int, registry: CollectorRegistry,
          page: Callable[[], str]) -> ThreadingHTTPServer:
    """Serve ``/metrics`` from ``registry`` and ``/`` from ``page()`` in a
    daemon thread; returns the server (``shutdown()`` stops it)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", page().encode())
                else:
                    self._send(404, "text/plain", b"not found: try / or /metrics\n")
            except Exception:
                log.exception("serving %s", path)
                self._send(500, "text/plain", b"internal error\n")

        def _send(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not news

    server = ThreadingHTTPServer((addr, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
