"""A real local HTTP endpoint that receives alert webhooks and Sentry envelopes for the tests."""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class AlertSink:
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    sentry_events: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0  # answer 503 to this many webhook posts (a dying channel)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def dsn(self) -> str:
        assert self.server is not None
        return f"http://publickey@127.0.0.1:{self.server.server_address[1]}/1"

    def webhooks_for(self, job_id: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [w for w in self.webhooks if (w.get("terminus") or {}).get("job_id") == str(job_id)]

    def events_for(self, job_id: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.sentry_events if (e.get("tags") or {}).get("job_id") == str(job_id)]

    def start(self) -> AlertSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    raw = gzip.decompress(raw)
                elif encoding == "deflate":
                    raw = zlib.decompress(raw)
                if self.path.startswith("/api/"):
                    sink._take_envelope(raw)
                    self._answer(200, b"{}")
                    return
                with sink.lock:
                    if sink.fail_next > 0:
                        sink.fail_next -= 1
                        failing = True
                    else:
                        failing = False
                        sink.webhooks.append(json.loads(raw))
                self._answer(503 if failing else 200, b"ok")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def _take_envelope(self, raw: bytes) -> None:
        lines = raw.split(b"\n")
        # envelope header, then (item header, payload) pairs
        index = 1
        while index + 1 < len(lines):
            header = json.loads(lines[index] or b"{}")
            payload = lines[index + 1]
            if header.get("type") in {"event", "error"}:
                with self.lock:
                    self.sentry_events.append(json.loads(payload))
            index += 2

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
