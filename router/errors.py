"""The gateway's typed errors: each thing a request can name that may be missing has one constructor
and one wording, whichever layer finds it missing (the control plane, the data plane's routing table,
the front door's permission check, MCP, the dashboard, Delta Sharing)."""

from __future__ import annotations

from runtime.errors import NotFound


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
