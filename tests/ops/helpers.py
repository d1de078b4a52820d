"""Helpers for the ops tests (imported by its test modules and its conftest's fixtures)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.alert_sink import AlertSink


class SentrySink(AlertSink):
    """A real local HTTP endpoint for sentry-sdk's transport: keeps every envelope, raw and parsed."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.raw: list[bytes] = []
        self.items_lock = threading.Lock()

    def _take_envelope(self, raw: bytes) -> None:
        super()._take_envelope(raw)
        lines = raw.split(b"\n")
        with self.items_lock:
            self.raw.append(raw)
            index = 1
            while index + 1 < len(lines):
                header = json.loads(lines[index] or b"{}")
                self.items.append((header, json.loads(lines[index + 1] or b"{}")))
                index += 2

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self.items_lock:
            return [payload for header, payload in self.items if header.get("type") == kind]

    def raw_text(self) -> str:
        with self.items_lock:
            return b"\n".join(self.raw).decode(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def sample(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return values.get((name, tuple(sorted(labels.items()))))


#: The sample names a family of each type is queried by (a family with no sample yet still declares them).
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def served_names(exposition: str) -> set[str]:
    """Every metric name a query may use against this exposition: each sample's, and each declared family's."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))}
    return names


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a process's output (Celery's banner and shutdown notice are plain text)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        start = line.find('{"timestamp"')
        if start >= 0:
            lines.append(json.loads(line[start:]))
    return lines
