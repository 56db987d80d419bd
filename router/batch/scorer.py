"""Batch scoring: a table's rows sent through a serving endpoint, the predictions written beside its keys.

The input is Parquet (a file or a folder of files) or a Delta table, local or on S3; the output is a
folder of Parquet parts or a Delta table. Rows go in batches (``dataframe_split`` requests of
``batch_rows``), ``concurrency`` requests in flight, each retried on 429, 502, 503, 504 and on lost
connections with exponential back-off (a ``Retry-After`` is honoured); any other error stops the run
and names the batch and the endpoint's own message.

Resuming: batch ``i`` is always the same rows (the input's files in name order, each cut in
``batch_rows``); ``part_rows`` worth of consecutive batches make part ``p``, which lands in the output
all at once — Parquet as ``part-{p:06d}.parquet`` (written aside and renamed into place; one PUT on S3),
Delta as one commit whose rows carry ``_part = p``. A run
that is interrupted and started again skips the batches already in the output: no row is scored twice
into it and none is missing. The output remembers the input it was made from (its files, sizes and the
batch size) and refuses to be resumed from different input.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from router.storage import arrow_filesystem, delta_storage_options, is_delta, s3_client
from runtime.errors import InvalidInput
from runtime.protocol import v2
from runtime.types import v2_datatype

RETRIED_STATUSES = frozenset({429, 502, 503, 504})
MANIFEST = "_zeroserve_batch.json"
BATCH_COLUMN = "_part"  # in a Delta output: which part each row came in


class BatchScoringError(Exception):
    """The run cannot go on; the message says which batch and why."""


@dataclass
class BatchResult:
    rows: int  # in the input
    scored: int  # by this run
    skipped: int  # rows of batches already in the output (a resumed run)
    batches: int
    retries: int
    seconds: float
    output: str

    @property
    def rows_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Progress:
    total: int
    done: int = 0
    retries: int = 0
    on_advance: Callable[[int, int], None] | None = None  # (rows done, total)

    def advance(self, rows: int) -> None:
        self.done += rows
        if self.on_advance is not None:
            self.on_advance(self.done, self.total)


# ---- storage ---------------------------------------------------------------------------------------


@dataclass
class _Input:
    location: str
    fragments: list[Any]  # pyarrow dataset fragments in name order
    schema: pa.Schema
    rows: int
    identity: list[list[Any]]  # (file, rows) per fragment: what a resumed run must find again
    delta: bool
    counts: list[int]  # rows per fragment
    @classmethod
    def open(cls, location: str) -> _Input:
        delta = is_delta(location)
        if delta:
            from deltalake import DeltaTable

            table = DeltaTable(location, storage_options=delta_storage_options(location))
            dataset = table.to_pyarrow_dataset()
            identity_extra = [["delta version", table.version()]]
        else:
            fs, path = arrow_filesystem(location)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise BatchScoringError(f"the input {location} does not exist")
            dataset = ds.dataset(path, format="parquet", filesystem=fs)
            identity_extra = []
        fragments = sorted(dataset.get_fragments(), key=lambda fragment: fragment.path)
        if not fragments:
            raise BatchScoringError(f"the input {location} holds no Parquet data")
        # Counted once: on S3 each count is a request for the file's footer.
        identity = [[fragment.path.rsplit("/", 1)[-1], fragment.count_rows()] for fragment in fragments]
        rows = sum(count for _, count in identity)
        return cls(location, fragments, dataset.schema, rows, identity_extra + identity, delta,
                   [count for _, count in identity])

    def batches(
        self, batch_rows: int, skip: Callable[[int], bool] = lambda index: False
    ) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(index, batch): batches of exactly ``batch_rows`` rows (the last one shorter), the same on
        every run, less those ``skip(index)`` names. A file whose rows all fall in skipped batches is not
        read at all (its row count is known): a resumed run reads what it still has to score."""
        pending: list[pa.RecordBatch] = []
        held = 0
        cursor = 0  # the input row where the next batch begins (a multiple of batch_rows)
        begins = 0  # the input row where the next file begins
        for fragment, count in zip(self.fragments, self.counts, strict=True):
            first, last = begins // batch_rows, (begins + count - 1) // batch_rows
            if count == 0:
                continue
            if all(skip(index) for index in range(first, last + 1)):
                # What is pending belongs to batch ``first``: skipped too, as is the rest of batch
                # ``last`` in the next file.
                pending, held = [], 0
                begins += count
                cursor = (last + 1) * batch_rows
                continue
            drop = cursor - begins if not pending else 0  # rows of a skipped batch that began before
            begins += count
            for batch in fragment.to_batches(batch_size=batch_rows):
                if drop:
                    if batch.num_rows <= drop:
                        drop -= batch.num_rows
                        continue
                    batch = batch.slice(drop)
                    drop = 0
                if not pending and batch.num_rows == batch_rows:
                    # The common case: a whole batch from one file, nothing to copy.
                    index, cursor = cursor // batch_rows, cursor + batch_rows
                    if not skip(index):
                        yield index, batch
                    continue
                pending.append(batch)
                held += batch.num_rows
                while held >= batch_rows:
                    table = pa.Table.from_batches(pending).combine_chunks()
                    index, cursor = cursor // batch_rows, cursor + batch_rows
                    if not skip(index):
                        yield index, table.slice(0, batch_rows).to_batches()[0]
                    rest = table.slice(batch_rows)
                    pending = rest.to_batches() if rest.num_rows else []
                    held = rest.num_rows
        if held and not skip(cursor // batch_rows):
            yield cursor // batch_rows, pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


class _Output:
    """Where parts land; knows which batches are there already."""

    def __init__(self, location: str, delta: bool) -> None:
        self.location = location
        self.delta = delta
        self.fs, self.path = arrow_filesystem(location)
        # Delta commits one at a time: concurrent appends would race to create the table and conflict.
        self._commit = threading.Lock()

    def manifest(self) -> dict[str, Any] | None:
        # Only "not there" means a first run: any other read failure stops the run (taking it for a first
        # run would write a new manifest over the output of another).
        try:
            with self.fs.open_input_stream(f"{self.path}/{MANIFEST}") as stream:
                document: dict[str, Any] = json.loads(stream.read())
                return document
        except FileNotFoundError:
            return None

    def start(self, manifest: dict[str, Any]) -> set[int]:
        """The batches already written; the manifest is written on a first run and checked on a resume."""
        found = self.manifest()
        if found is None:
            self._put(MANIFEST, json.dumps(manifest, indent=1).encode())
            return set()
        if found != manifest:
            raise BatchScoringError(
                f"{self.location} holds the output of another run (input, batch size, endpoint or columns "
                f"differ: {found} != {manifest}); write to a new output, or remove it to start over")
        if not self.location.startswith("s3://"):
            # Parts a killed run was writing aside: never renamed into place, so never part of the output.
            for info in self.fs.get_file_info(pafs.FileSelector(self.path)):
                name = info.path.rsplit("/", 1)[-1]
                if name.startswith(".") and name.endswith(".tmp"):
                    self.fs.delete_file(info.path)
        return self._done()

    def _done(self) -> set[int]:
        if self.delta:
            if not is_delta(self.location):
                return set()
            from deltalake import DeltaTable

            table = DeltaTable(self.location, storage_options=delta_storage_options(self.location))
            column = table.to_pyarrow_table(columns=[BATCH_COLUMN]).column(BATCH_COLUMN)
            return set(np.unique(column.to_numpy()).tolist())
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        done = set()
        for info in self.fs.get_file_info(selector):
            name = info.path.rsplit("/", 1)[-1]
            if name.startswith("part-") and name.endswith(".parquet") and name[5:-8].isdigit():
                done.add(int(name[5:-8]))
        return done

    def write(self, index: int, table: pa.Table) -> None:
        if self.delta:
            from deltalake import write_deltalake

            table = table.append_column(BATCH_COLUMN, pa.array(np.full(table.num_rows, index, np.int64)))
            with self._commit:
                write_deltalake(self.location, table, mode="append",
                                storage_options=delta_storage_options(self.location))
            return
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        self._put(f"part-{index:06d}.parquet", buffer.getvalue().to_pybytes())

    def _put(self, name: str, data: bytes) -> None:
        """Write one object whole: a part is either complete or absent, whenever the run stops."""
        if self.location.startswith("s3://"):
            # One PUT (atomic on S3); pyarrow's writer would make a multipart upload of every object.
            bucket, _, prefix = self.path.partition("/")
            s3_client().put_object(Bucket=bucket, Key=f"{prefix}/{name}".lstrip("/"), Body=data)
            return
        self.fs.create_dir(self.path, recursive=True)
        aside = f"{self.path}/.{name}-{uuid.uuid4().hex[:8]}.tmp"  # aside, then renamed into place
        with self.fs.open_output_stream(aside) as stream:
            stream.write(data)
        self.fs.move(aside, f"{self.path}/{name}")


# ---- requests ---------------------------------------------------------------------------------------


def request_body(batch: pa.RecordBatch, features: Sequence[str]) -> bytes:
    columns = [batch.column(name) for name in features]
    if _numeric(batch, features):
        data: Any = np.column_stack([c.to_numpy(zero_copy_only=False) for c in columns])
    else:
        data = [list(row) for row in zip(*(c.to_pylist() for c in columns), strict=True)]
    return orjson.dumps({"dataframe_split": {"columns": list(features), "data": data}},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def _numeric(batch: pa.RecordBatch, features: Sequence[str]) -> bool:
    return all((pa.types.is_integer(c.type) or pa.types.is_floating(c.type) or pa.types.is_boolean(c.type))
               and c.null_count == 0 for c in (batch.column(name) for name in features))


def v2_binary_body(batch: pa.RecordBatch, features: Sequence[str]) -> tuple[bytes, int]:
    """An Open Inference Protocol request with the binary tensor extension: one input per column, the
    raw little-endian values after a JSON header, and the outputs asked back as binary. Neither side
    formats or parses a number: for numeric tables this is the cheap way through the endpoint."""
    arrays = [np.ascontiguousarray(batch.column(name).to_numpy(zero_copy_only=False)) for name in features]
    arrays = [array.astype(array.dtype.newbyteorder("<"), copy=False) for array in arrays]
    header = orjson.dumps({
        "inputs": [{"name": name, "shape": [len(array)], "datatype": v2_datatype(array.dtype),
                    "parameters": {"binary_data_size": array.nbytes}} for name, array in zip(features, arrays,
                                                                                                strict=True)],
        "parameters": {"binary_data_output": True},
    })
    return header + b"".join(array.tobytes() for array in arrays), len(header)


def v2_table(outputs: dict[str, np.ndarray], rows: int) -> pa.Table:
    columns = {}
    for name, values in outputs.items():
        if values.shape[:1] != (rows,):
            raise BatchScoringError(f"the endpoint answered output {name!r} of shape {values.shape} for "
                                    f"{rows} rows")
        if values.dtype.kind == "O":  # BYTES: text (labels), as the replica encoded it
            text = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values.ravel()]
            values = np.array(text, dtype=object).reshape(values.shape)
        if values.ndim > 1:  # one list of values per row
            flat = pa.array(values.reshape(rows, -1).ravel())
            column = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(values.shape[1:])))
        else:
            column = pa.array(values)
        columns["prediction" if len(outputs) == 1 else name] = column
    return pa.table(columns)


def predictions_table(answer: Any, rows: int) -> pa.Table:
    """The endpoint's predictions as columns: ``prediction`` for one value (or list) per row, one column
    per field for records or a dict of columns."""
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if predictions is None:
        raise BatchScoringError(f"the endpoint answered without predictions: {str(answer)[:200]}")
    if isinstance(predictions, dict):
        table = pa.table({str(name): values for name, values in predictions.items()})
    elif predictions and isinstance(predictions[0], dict):
        table = pa.Table.from_pylist(predictions)
    else:
        table = pa.table({"prediction": predictions})
    if table.num_rows != rows:
        raise BatchScoringError(f"the endpoint answered {table.num_rows} predictions for {rows} rows")
    return table


async def _send(
    client: httpx.AsyncClient, path: str, body: bytes, index: int, progress: _Progress, max_retries: int,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    delay = 0.5
    for attempt in range(max_retries + 1):
        try:
            response = await client.post(path, content=body,
                                         headers=headers or {"content-type": "application/json"})
        except httpx.TransportError as exc:
            problem, wait = f"{type(exc).__name__}: {exc}", delay
        else:
            if response.status_code == 200:
                return response
            try:
                said = response.json().get("message", response.text)
            except ValueError:
                said = response.text
            if response.status_code not in RETRIED_STATUSES:
                raise BatchScoringError(f"batch {index}: the endpoint answered {response.status_code}: "
                                        f"{str(said)[:500]}")
            problem, wait = f"{response.status_code} {str(said)[:200]}", delay
            retry_after = response.headers.get("retry-after", "")
            if retry_after.isdigit():
                wait = max(wait, float(retry_after))
        if attempt == max_retries:
            raise BatchScoringError(f"batch {index}: gave up after {max_retries} retries; last: {problem}")
        progress.retries += 1
        await asyncio.sleep(wait * (0.5 + random.random()))  # jittered: concurrent batches spread out
        delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


async def score_batch(
    client: httpx.AsyncClient, batch: pa.RecordBatch, *, endpoint: str, features: Sequence[str],
    protocol: str, index: int, progress: _Progress, max_retries: int,
) -> pa.Table:
    """The endpoint's predictions for ``batch`` (retried as ``_send`` does), as columns."""
    if protocol == "v2-binary" or (protocol == "auto" and _numeric(batch, features)):
        body, length = v2_binary_body(batch, features)
        response = await _send(client, f"/v2/models/{endpoint}/infer", body, index, progress, max_retries, {
            "content-type": "application/octet-stream", "inference-header-content-length": str(length)})
        length = response.headers.get("inference-header-content-length")
        try:
            outputs = v2.decode_outputs(response.content, length)
        except InvalidInput as error:
            raise BatchScoringError(
                f"batch {index}: the endpoint's answer cannot be read: {error.message}") from None
        return v2_table(outputs, batch.num_rows)
    body = request_body(batch, features)
    response = await _send(client, f"/serving-endpoints/{endpoint}/invocations", body, index, progress,
                           max_retries)
    return predictions_table(orjson.loads(response.content), batch.num_rows)


PROTOCOLS = ("auto", "json", "v2-binary")


# ---- the run ----------------------------------------------------------------------------------------


@dataclass
class BatchJob:
    endpoint: str
    input: str
    output: str
    url: str
    token: str | None = None
    key: Sequence[str] = ()
    features: Sequence[str] | None = None  # default: every input column not in ``key``
    batch_rows: int = 1000
    # Rows per part of the output (whole batches): what lands at once, and what an interruption redoes.
    part_rows: int = 50_000
    concurrency: int = 4
    max_retries: int = 8
    timeout_s: float = 300.0
    output_format: str | None = None  # "parquet" or "delta"; default: delta if the input is one
    # "json" (dataframe_split, any column types), "v2-binary" (the Open Inference Protocol's binary
    # tensors), "auto": binary for a batch whose features are all numbers without nulls.
    protocol: str = "auto"
    on_progress: Callable[[int, int], None] | None = field(default=None, repr=False)


def score(job: BatchJob) -> BatchResult:
    """Score ``job.input`` through ``job.endpoint`` into ``job.output`` (see the module doc)."""
    return asyncio.run(score_async(job))


async def score_async(job: BatchJob) -> BatchResult:
    if job.batch_rows < 1 or job.concurrency < 1 or job.part_rows < 1:
        raise BatchScoringError("batch_rows, part_rows and concurrency must be at least 1")
    if job.protocol not in PROTOCOLS:  # before anything is written
        raise BatchScoringError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {job.protocol!r}")
    source = await asyncio.to_thread(_Input.open, job.input)
    names = source.schema.names
    missing = [name for name in (*job.key, *(job.features or ())) if name not in names]
    if missing:
        raise BatchScoringError(f"columns {missing} are not in the input (it has {names})")
    features = list(job.features) if job.features else [name for name in names if name not in job.key]
    delta = (job.output_format or ("delta" if source.delta else "parquet")) == "delta"
    output = _Output(job.output, delta)
    per_part = max(1, job.part_rows // job.batch_rows)  # batches per part: the unit that lands, or not
    manifest = {"input": source.identity, "batch_rows": job.batch_rows, "batches_per_part": per_part,
                "endpoint": job.endpoint, "key": list(job.key), "features": features}
    done = await asyncio.to_thread(output.start, manifest)
    progress = _Progress(source.rows, on_advance=job.on_progress)
    headers = {"Authorization": f"Bearer {job.token}"} if job.token else {}
    started = time.monotonic()
    batches = -(-source.rows // job.batch_rows)
    # Rows of the parts already written: counted, and (whole files of them) not even read.
    skipped = sum(min(job.batch_rows, source.rows - index * job.batch_rows)
                  for index in range(batches) if index // per_part in done)
    progress.advance(skipped)
    scored = 0
    # A part's batches, answered (by batch index), until the part is whole and written.
    answered: dict[int, dict[int, pa.Table]] = {}
    expected = {part: min(per_part, batches - part * per_part) for part in range(-(-batches // per_part))}
    writes: list[asyncio.Task[None]] = []
    failures: list[BaseException] = []

    def part_whole(part: int) -> None:
        if part in expected and len(answered.get(part, {})) == expected[part]:
            tables = answered.pop(part)
            merged = pa.concat_tables([tables[index] for index in sorted(tables)])
            writes.append(asyncio.create_task(write(part, merged)))

    async def write(part: int, table: pa.Table) -> None:
        nonlocal scored
        try:
            await asyncio.to_thread(output.write, part, table)
            scored += table.num_rows
        except BaseException as exc:
            failures.append(exc)

    limits = httpx.Limits(max_connections=job.concurrency, max_keepalive_connections=job.concurrency)
    async with httpx.AsyncClient(base_url=job.url, headers=headers, timeout=job.timeout_s,
                                 limits=limits) as client:
        slots = asyncio.Semaphore(job.concurrency)

        async def one(index: int, batch: pa.RecordBatch) -> None:
            try:
                predicted = await score_batch(client, batch, endpoint=job.endpoint, features=features,
                                              protocol=job.protocol, index=index, progress=progress,
                                              max_retries=job.max_retries)
                keys = batch.select(list(job.key))
                answered.setdefault(index // per_part, {})[index] = pa.Table.from_arrays(
                    [*keys.columns, *predicted.columns], names=[*keys.schema.names, *predicted.column_names])
                progress.advance(batch.num_rows)
                part_whole(index // per_part)
            except BaseException as exc:
                failures.append(exc)
            finally:
                slots.release()

        tasks: list[asyncio.Task[None]] = []
        for index, batch in source.batches(job.batch_rows, skip=lambda index: index // per_part in done):
            await slots.acquire()
            if failures:
                slots.release()
                break
            tasks.append(asyncio.create_task(one(index, batch)))
        await asyncio.gather(*tasks)
        await asyncio.gather(*writes)
    if failures:
        error = failures[0]
        raise error if isinstance(error, BatchScoringError) else BatchScoringError(
            f"{type(error).__name__}: {error}") from error
    return BatchResult(source.rows, scored, skipped, batches, progress.retries, time.monotonic() - started,
                       job.output)
