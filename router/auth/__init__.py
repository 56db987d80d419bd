"""The front door: bearer tokens, per-endpoint permissions, rate limits, request limits, TLS, audit.

Handlers need only ``principal_of``, ``authorize``, ``admit_query``, ``filter_visible`` and
``PermissionLevel``; the gateway builds a ``FrontDoor`` (``router.auth.frontdoor``) and wraps its app.
"""

from router.auth.access import admit_query, authorize, filter_visible, principal_of, require_admin
from router.auth.types import EndpointRef, PermissionLevel, Principal

__all__ = [
    "EndpointRef",
    "PermissionLevel",
    "Principal",
    "admit_query",
    "authorize",
    "filter_visible",
    "principal_of",
    "require_admin",
]
