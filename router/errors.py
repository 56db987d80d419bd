"""The gateway's errors (``runtime.errors`` keeps those a replica gives too). Each thing a request can
name that may be missing has one typed constructor and one wording, whichever layer finds it missing (the
control plane, the data plane's routing table, the front door's permission check, MCP, the dashboard,
Delta Sharing)."""

from __future__ import annotations

from runtime.errors import NotFound, ZeroserveError

# The gateway's own refusals (a replica never gives them): who may call, how often, how long it waits.


class Unauthenticated(ZeroserveError):
    status_code = 401
    error_code = "UNAUTHENTICATED"


class PermissionDenied(ZeroserveError):
    status_code = 403
    error_code = "PERMISSION_DENIED"


class AlreadyExists(ZeroserveError):
    status_code = 409
    error_code = "RESOURCE_ALREADY_EXISTS"


class RateLimited(ZeroserveError):
    status_code = 429
    error_code = "REQUEST_LIMIT_EXCEEDED"


class RequestTimeout(ZeroserveError):
    """The request's body did not arrive in time (the front door's body timeout)."""

    status_code = 408
    error_code = "REQUEST_TIMEOUT"


class NotLeader(ZeroserveError):
    """A fleet-internal call that only the leading gateway answers reached another one."""

    status_code = 409
    error_code = "NOT_LEADER"


class UpstreamTimeout(ZeroserveError):
    status_code = 504
    error_code = "DEADLINE_EXCEEDED"


class NoSuchRoute(ZeroserveError):
    """A path no route serves (Databricks' code for an API that does not exist)."""

    status_code = 404
    error_code = "ENDPOINT_NOT_FOUND"

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"No API found for '{method} {path}'")


class MethodNotAllowed(ZeroserveError):
    """A path served, but not with this method; ``allowed``: every method it is served with."""

    status_code = 405
    error_code = "BAD_REQUEST"

    def __init__(self, method: str, path: str, allowed: list[str]) -> None:
        super().__init__(f"Method {method} is not allowed on {path}", headers={"Allow": ", ".join(allowed)})


class EndpointNotFound(NotFound):
    """A serving endpoint (by name or id) that does not exist — or that the caller may not see: the two
    answers must be indistinguishable, so both are this one."""

    def __init__(self, name: str) -> None:
        super().__init__(f"Serving endpoint {name!r} does not exist.")
        self.name = name


class ShareNotFound(NotFound):
    """A Delta Sharing share that does not exist, or that the recipient is not given."""

    def __init__(self, name: str) -> None:
        super().__init__(f"Share {name!r} does not exist.")
        self.name = name
