"""One wording for each missing thing, whichever layer finds it missing."""

from __future__ import annotations

from router.auth.permissions import not_found
from router.dataplane.routing import RoutingTable
from router.errors import EndpointNotFound
from runtime.errors import NotFound


def test_an_endpoint_missing_reads_the_same_from_routing_and_from_permissions() -> None:
    try:
        RoutingTable().lookup("fraud")
    except NotFound as error:
        routed = error
    else:
        raise AssertionError("an unknown endpoint was routed")
    hidden = not_found("fraud")
    assert isinstance(routed, EndpointNotFound) and isinstance(hidden, EndpointNotFound)
    assert routed.to_dict() == hidden.to_dict() == {
        "error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Serving endpoint 'fraud' does not exist."}
