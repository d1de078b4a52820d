"""What a record may hold: text and JSON made storable on every database, and bounded in size.

A job's result, error message and traceback come from code Terminus does not control (a job body, a
webhook receiver, an exception's text). PostgreSQL refuses a NUL character in text and in jsonb,
every driver refuses a lone surrogate (invalid unicode), jsonb refuses NaN and infinities, and a
50 MB answer would bloat every poll of the job. Any of those would make the terminal write fail
and leave the job open, so the record cleans what it is given before it writes: NUL and invalid
unicode are escaped (visibly: ``\\x00``, ``\\udc80``), numbers JSON cannot hold become strings, and
what is over its limit is cut with a marker saying how much was cut.
"""

from __future__ import annotations

import json
import math
from typing import Any

from django.conf import settings

#: Characters kept of an error message (the rest is cut, with a marker).
MAX_ERROR_CHARS = 10_000
#: Characters kept of a traceback: its end, where the exception is.
MAX_TRACEBACK_CHARS = 64_000
#: Characters of an oversized result's JSON kept as its preview.
RESULT_PREVIEW_CHARS = 1_000
#: Nesting a stored result may have (deeper ones exhaust JSON encoders and decoders).
MAX_RESULT_DEPTH = 100
#: The key that marks a result replaced because it could not be stored as it was.
MARKER = "_terminus_not_stored"


def escaped(text: str) -> str:
    """``text`` with NUL and lone surrogates written out as escapes, so every database stores it."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def storable_text(text: str, limit: int = MAX_ERROR_CHARS, *, keep_end: bool = False) -> str:
    """``text`` escaped and cut to ``limit`` characters, with a marker saying how much was cut."""
    text = escaped(str(text))
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if keep_end:
        return f"[… {cut} characters cut]\n" + text[-limit:]
    return text[:limit] + f" [… {cut} characters cut]"


def storable_traceback(text: str) -> str:
    return storable_text(text, MAX_TRACEBACK_CHARS, keep_end=True)


def _clean(value: Any, depth: int) -> Any:
    if depth > MAX_RESULT_DEPTH:
        raise ValueError(f"nested deeper than {MAX_RESULT_DEPTH} levels")
    if isinstance(value, str):
        return escaped(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": jsonb has no such number
    if isinstance(value, dict):
        return {escaped(str(key)): _clean(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item, depth + 1) for item in value]
    return value


def storable_json(value: Any, limit_bytes: int | None = None) -> Any:
    """``value`` as it can be stored in a JSON column: cleaned, or a marker object when it cannot be kept.

    The marker (``{"_terminus_not_stored": why, "bytes": …, "preview": …}``) says why the value
    was not kept and shows its start, so the job still ends ``succeeded`` with what it returned
    described rather than lost.
    """
    limit = settings.TERMINUS_MAX_RESULT_BYTES if limit_bytes is None else limit_bytes
    try:
        cleaned = _clean(value, 0)
        encoded = json.dumps(cleaned, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return {MARKER: f"not JSON that can be stored: {storable_text(str(exc), 500)}"}
    size = len(encoded.encode("utf-8"))
    if size <= limit:
        return cleaned
    return {
        MARKER: f"{size} bytes of JSON, over the {limit}-byte limit (TERMINUS_MAX_RESULT_BYTES)",
        "bytes": size,
        "preview": encoded[:RESULT_PREVIEW_CHARS],
    }
