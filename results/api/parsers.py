"""A JSON parser that enforces DATA_UPLOAD_MAX_MEMORY_SIZE whatever the DRF version.

Django's request-size limit only guards ``request.body`` and ``request.POST``. DRF 3.18 feeds
JSONParser from ``request.body`` (so an oversized body raises RequestDataTooBig, which
results.api.errors turns into 413); DRF versions that hand parsers the raw WSGI stream would
read and parse a body of any size. This parser refuses it with 413 by Content-Length before
reading, and never reads more than the limit plus one byte whatever the header says.
"""

from __future__ import annotations

import io
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from .errors import RequestTooLarge


class LimitedJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and stream is not None:
            request = (parser_context or {}).get("request")
            meta = getattr(request, "META", {})
            try:
                declared = int(meta.get("CONTENT_LENGTH") or 0)
            except (TypeError, ValueError):
                declared = 0
            if declared > limit:
                raise RequestTooLarge()
            data = stream.read(limit + 1)
            if len(data) > limit:
                raise RequestTooLarge()
            stream = io.BytesIO(data)
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:  # json raises it, not ValueError, for very deep nesting
            raise ParseError("JSON parse error - nested too deeply") from None
