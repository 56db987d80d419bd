"""Inference tables in Delta Lake format (``ZEROSERVE_INFERENCE_TABLES_FORMAT=delta``, or an endpoint's
``auto_capture_config.format``): each batch is one append commit to ``{root}/{table}``, partitioned by
``date``. A commit is all or nothing — a crash loses at most the batch being written, never a committed
one, and the table is readable (by ``deltalake``, polars, DuckDB's delta reader, Spark with Delta)
at every moment. Maintenance, off the request path: small files compacted, and with
``retention_days`` set, rows older than that deleted and their files vacuumed.

``deltalake`` is imported only for tables in this format (``pip install 'zeroserve[batch]'``).
"""

from __future__ import annotations

import datetime
import os
from typing import TYPE_CHECKING, Any

from router.observability import _parquet
from router.storage import delta_storage_options

if TYPE_CHECKING:
    from router.observability.inference_tables import CaptureRecord


def location(root: str, table: str) -> str:
    root = root.removeprefix("file://")
    return f"{root.rstrip('/')}/{table}"


def append(root: str, table: str, records: list[CaptureRecord]) -> None:
    """One commit with ``records`` (blocking: run it in a worker thread)."""
    from deltalake import write_deltalake

    where = location(root, table)
    if not where.startswith("s3://"):
        os.makedirs(where, exist_ok=True)
    write_deltalake(where, _parquet.arrow_table(records), mode="append", partition_by=["date"],
                    storage_options=delta_storage_options(where))


def maintain(root: str, table: str, retention_days: float | None, now: datetime.datetime) -> dict[str, Any]:
    """Compact small files; with ``retention_days``, delete older rows and vacuum their files."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    where = location(root, table)
    try:
        delta = DeltaTable(where, storage_options=delta_storage_options(where))
    except TableNotFoundError:
        return {}
    done: dict[str, Any] = {"compacted": delta.optimize.compact().get("numFilesRemoved", 0)}
    if retention_days is not None:
        cutoff = (now - datetime.timedelta(days=retention_days)).date().isoformat()
        deleted = delta.delete(f"date < '{cutoff}'")
        done["deleted_rows"] = deleted.get("num_deleted_rows", 0)
    # Files no longer in the table (compacted away, deleted) go at once: readers of old versions are not
    # served from the gateway's tables, and time travel is not what the retention promises.
    done["vacuumed"] = len(delta.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False))
    return done
