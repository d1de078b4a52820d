"""The browsable API: Swagger UI at ``/api/docs/`` and Redoc at ``/api/redoc/``, both on ``/api/schema/``.

drf-spectacular's views, with Swagger UI and Redoc served from this site's static files
(drf-spectacular-sidecar), so the pages work with no internet access. They render under the
site's Content-Security-Policy: no inline script or style (templates ``api/*.html``; Swagger UI's
init script is the split view's own ``?script=`` answer). Redoc alone gets two additions:
inline ``<style>`` elements (its bundle injects some as it loads, before any nonce could reach it;
scripts stay 'self' only), and ``blob:`` workers for its search index. Its sidebar footer's
Redocly logo (https://cdn.redoc.ly) stays blocked by img-src, and Redoc hides it.
"""

from __future__ import annotations

import csp.constants as csp
from csp.decorators import csp_update
from django.utils.decorators import method_decorator
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerSplitView

SCHEMA_URL_NAME = "api-schema"


class SwaggerView(SpectacularSwaggerSplitView):
    """``/api/docs/``: try every endpoint (Authorize with ``Token <key>``, or signed in)."""

    url_name = SCHEMA_URL_NAME
    template_name = "api/swagger_ui.html"


@method_decorator(csp_update({"style-src": [csp.UNSAFE_INLINE], "worker-src": [csp.SELF, "blob:"]}), name="dispatch")
class RedocView(SpectacularRedocView):
    """``/api/redoc/``: the reference, one page."""

    url_name = SCHEMA_URL_NAME
    template_name = "api/redoc.html"
