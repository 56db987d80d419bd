"""Observability of the gateway: Prometheus metrics, cost, time series and the dashboard, inference
tables, and structured logs with request ids.

``Observability`` (``service.py``) wires the parts together; ``dashboard_routes`` serves them.
"""

from router.observability.cost import CostLedger, CostSettings
from router.observability.inference_tables import CaptureRecord, InferenceTables, InferenceTableSettings
from router.observability.service import EndpointView, EntityView, Observability, ObservabilitySettings

__all__ = [
    "CaptureRecord",
    "CostLedger",
    "CostSettings",
    "EndpointView",
    "EntityView",
    "InferenceTableSettings",
    "InferenceTables",
    "Observability",
    "ObservabilitySettings",
]
