"""A real HTTP receiver on 127.0.0.1 that answers from a script and records every request.

Used by the webhook tests (deliveries, retries, timeouts), by the outbound-policy tests (a listener
that must receive nothing) and by the hostile-answer tests (NUL, invalid UTF-8, huge bodies).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: A scripted answer: an HTTP status, HANG to keep the request open past the client's timeout, or
#: (status, body bytes) to answer exactly those bytes.
HANG = "hang"
Answer = int | str | tuple[int, bytes]


@dataclass
class Receiver:
    """Answers from ``script`` (the last entry repeats) and records each request it got."""

    script: list[Answer]
    url: str = ""
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def next_answer(self, request: dict[str, Any]) -> Answer:
        with self.lock:
            self.requests.append(request)
            return self.script[min(len(self.requests), len(self.script)) - 1]

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            answer = receiver.next_answer(
                {"method": "POST", "path": self.path, "headers": dict(self.headers.items()), "body": raw}
            )
            if answer == HANG:
                receiver.release.wait(timeout=30)
                return
            if isinstance(answer, tuple):
                status, body = answer
                content_type = "application/octet-stream"
            else:
                status, body = int(answer), json.dumps({"received": True, "status": answer}).encode()
                content_type = "application/json"
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "https://elsewhere.test/hook")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The client may stop reading a huge body: that is its right.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def start_receiver(*script: Answer, host: str = "127.0.0.1") -> Receiver:
    """A receiver listening on an ephemeral port of ``host``; stop it with ``.stop()``."""
    receiver = Receiver(list(script))
    server_class = IPv6Server if ":" in host else ThreadingHTTPServer
    server = server_class((host, 0), _handler(receiver))
    server.daemon_threads = True
    receiver.server = server
    receiver.port = server.server_address[1]
    receiver.url = f"http://{f'[{host}]' if ':' in host else host}:{receiver.port}/hook"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return receiver
