"""The error hierarchy shared by every zeroserve component.

Each error carries its HTTP status and a Databricks/MLflow-style ``error_code``; exactly one place per
server (its exception handler) turns them into ``{"error_code": ..., "message": ...}`` responses.
"""

from __future__ import annotations


class ZeroserveError(Exception):
    """Base class: an error that knows how it is answered over HTTP."""

    status_code: int = 500
    error_code: str = "INTERNAL_ERROR"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def to_dict(self) -> dict[str, str]:
        return {"error_code": self.error_code, "message": self.message}


class InvalidInput(ZeroserveError):
    status_code = 400
    error_code = "BAD_REQUEST"


class InvalidParameterValue(ZeroserveError):
    status_code = 400
    error_code = "INVALID_PARAMETER_VALUE"


class NotFound(ZeroserveError):
    status_code = 404
    error_code = "RESOURCE_DOES_NOT_EXIST"


class PayloadTooLarge(ZeroserveError):
    status_code = 413
    error_code = "REQUEST_TOO_LARGE"


class UnsupportedMediaType(ZeroserveError):
    status_code = 415
    error_code = "UNSUPPORTED_MEDIA_TYPE"


class QueueFull(ZeroserveError):
    status_code = 429
    error_code = "REQUEST_LIMIT_EXCEEDED"


class ModelLoadError(ZeroserveError):
    status_code = 500
    error_code = "MODEL_LOAD_ERROR"


class InferenceError(ZeroserveError):
    status_code = 500
    error_code = "INTERNAL_ERROR"


class NoCapacity(ZeroserveError):
    status_code = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


class StoreError(ZeroserveError):
    """The model store could not deliver a model (unreachable, missing, corrupt beyond retry)."""

    status_code = 502
    error_code = "STORE_UNAVAILABLE"
