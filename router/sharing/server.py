"""A Delta Sharing server in the gateway (the open Delta Sharing REST protocol, ``/delta-sharing``).

Recipients authenticate with their own zeroserve bearer token and see only the shares they were added
to (a share or table they may not see is a 404, like one that does not exist); admins see every share.
Queries answer the table's files as URLs that expire (``ZEROSERVE_SHARING_URL_TTL_S``, an hour):
presigned S3 URLs for tables on S3, and for local tables URLs of this gateway signed with a key kept in
the state database (any gateway of a fleet can serve them), fetched without a token.

Admin API (``/api/2.0/zeroserve/shares``) and ``zeroserve shares ...`` define shares, their tables and
recipients; adding a recipient can mint its token and returns the profile file to hand to the partner.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from router.auth.access import principal_of, require_admin
from router.auth.types import Principal
from router.errors import PermissionDenied, ShareNotFound
from router.sharing.store import Share, SharedTable, SharingStore
from router.state.db import Database
from router.storage import delta_storage_options, s3_client
from runtime.errors import InvalidParameterValue, NotFound, StoreError

PREFIX = "/delta-sharing"
FILES_PATH = f"{PREFIX}/files"  # public: the signature in the query string is the credential
ADMIN = "/api/2.0/zeroserve/shares"
KEY_MIGRATIONS = ["CREATE TABLE sharing_keys (id INTEGER PRIMARY KEY, key TEXT NOT NULL);"]


def _ndjson(lines: list[dict[str, Any]], version: int) -> Response:
    body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
    return Response(body, media_type="application/x-ndjson", headers={"delta-table-version": str(version)})


def _json(content: Any) -> Response:
    return Response(orjson.dumps(content), media_type="application/json")


class SharingServer:
    def __init__(self, db: Database, *, url_ttl_s: float = 3600.0) -> None:
        self.store = SharingStore(db)
        self._db = db
        db.migrate("sharing_keys", KEY_MIGRATIONS)
        self.url_ttl_s = url_ttl_s
        self._key: bytes | None = None

    # ---- who may see what ------------------------------------------------------------------------

    def _visible(self, principal: Principal | None) -> set[str] | None:
        """The shares ``principal`` may read; None for all (an admin, or auth turned off)."""
        if principal is None or principal.is_admin:
            return None
        return self.store.shares_of(principal.name)

    def _share(self, request: Request) -> Share:
        name = request.path_params["share"]
        visible = self._visible(principal_of(request))
        if visible is not None and name not in visible:
            raise ShareNotFound(name)
        return self.store.share(name)

    def _table(self, request: Request) -> SharedTable:
        share = self._share(request)
        return self.store.table(share.name, request.path_params["schema"], request.path_params["table"])

    # ---- the protocol ------------------------------------------------------------------------------

    async def list_shares(self, request: Request) -> Response:
        visible = self._visible(principal_of(request))
        items = [{"name": share.name, "id": share.id} for share in self.store.shares()
                 if visible is None or share.name in visible]
        return _json({"items": items})

    async def get_share(self, request: Request) -> Response:
        share = self._share(request)
        return _json({"share": {"name": share.name, "id": share.id}})

    async def list_schemas(self, request: Request) -> Response:
        share = self._share(request).name
        names = sorted({table.schema for table in self.store.tables(share)})
        return _json({"items": [{"name": name, "share": share} for name in names]})

    async def list_tables(self, request: Request) -> Response:
        share = self._share(request)
        schema = request.path_params.get("schema")
        tables = self.store.tables(share.name, schema)
        if schema is not None and not tables:
            raise NotFound(f"Schema '{schema}' does not exist in share '{share.name}'.")
        return _json({"items": [{"name": t.name, "schema": t.schema, "share": t.share, "shareId": share.id,
                                 "id": t.id} for t in tables]})

    async def version(self, request: Request) -> Response:
        table = self._table(request)
        delta = await asyncio.to_thread(_open, table.location, None)
        return Response(b"", headers={"delta-table-version": str(delta.version())})

    async def metadata(self, request: Request) -> Response:
        table = self._table(request)
        delta = await asyncio.to_thread(_open, table.location, None)
        return _ndjson([_protocol(), _metadata(table, delta)], delta.version())

    async def query(self, request: Request) -> Response:
        table = self._table(request)
        body = await request.body()
        try:
            options = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            raise InvalidParameterValue("the query body is not JSON") from None
        version = options.get("version") if isinstance(options, dict) else None
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
            raise InvalidParameterValue(f"version must be a non-negative integer, got {version!r}")
        limit = options.get("limitHint") if isinstance(options, dict) else None
        delta = await asyncio.to_thread(_open, table.location, version)
        files = await asyncio.to_thread(self._files, table, delta, limit)
        return _ndjson([_protocol(), _metadata(table, delta), *files], delta.version())

    def _files(self, table: SharedTable, delta: Any, limit: Any) -> list[dict[str, Any]]:
        import pyarrow as pa

        # An Arrow stream (arro3), read as a pyarrow table.
        actions = pa.table(delta.get_add_actions(flatten=True)).to_pylist()
        expires_ms = int((time.time() + self.url_ttl_s) * 1000)
        # One client for every URL of the answer (reading the S3 settings is not free, and a table may
        # have thousands of files).
        presigner = s3_client() if table.location.startswith("s3://") else None
        files = []
        rows = 0
        for action in sorted(actions, key=lambda item: item["path"]):
            partitions = {key.removeprefix("partition."): (None if value is None else str(value))
                          for key, value in action.items() if key.startswith("partition.")}
            records = action.get("num_records")
            files.append({"file": {
                "url": self._url(table, action["path"], expires_ms, presigner),
                "id": hashlib.sha256(f"{table.id}/{action['path']}".encode()).hexdigest()[:32],
                "partitionValues": partitions,
                "size": int(action["size_bytes"]),
                "stats": orjson.dumps({"numRecords": records}).decode() if records is not None else None,
                "expirationTimestamp": expires_ms,
            }})
            rows += records or 0
            if isinstance(limit, int) and limit > 0 and rows >= limit:
                break  # a hint: the client filters the rest itself
        return files

    # ---- file URLs ---------------------------------------------------------------------------------

    def _url(self, table: SharedTable, path: str, expires_ms: int, presigner: Any) -> str:
        """A URL the recipient fetches ``path`` of ``table`` at without a token: presigned by
        ``presigner`` (a botocore S3 client) for a table on S3, signed by this gateway otherwise."""
        if presigner is not None:
            bucket, _, prefix = table.location.removeprefix("s3://").partition("/")
            return str(presigner.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": f"{prefix.rstrip('/')}/{path}".lstrip("/")},
                ExpiresIn=int(self.url_ttl_s)))
        claim = f"{table.share}\n{table.schema}\n{table.name}\n{path}\n{expires_ms}".encode()
        token = base64.urlsafe_b64encode(claim).decode().rstrip("=")
        signature = hmac.new(self._signing_key(), claim, hashlib.sha256).hexdigest()
        return f"{self.base_url}{FILES_PATH}?f={token}&s={signature}"

    base_url = ""  # set by the gateway: the URL partners reach it at

    def _signing_key(self) -> bytes:
        if self._key is None:
            with self._db.transaction(notify=False) as conn:
                row = conn.execute("SELECT key FROM sharing_keys WHERE id = 1").fetchone()
                if row is None:
                    key = secrets.token_hex(32)
                    conn.execute("INSERT INTO sharing_keys(id, key) VALUES (1, ?)", (key,))
                else:
                    key = row[0]
            self._key = bytes.fromhex(key)
        return self._key

    async def file(self, request: Request) -> Response:
        token, signature = request.query_params.get("f", ""), request.query_params.get("s", "")
        try:
            claim = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            raise PermissionDenied("this file URL is not valid") from None
        expected = hmac.new(self._signing_key(), claim, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.encode("ascii", "replace").decode()):
            raise PermissionDenied("this file URL is not valid (its signature does not match)")
        # Signed by this gateway, so well formed.
        share, schema, name, path, expires = claim.decode().split("\n")
        if int(expires) < time.time() * 1000:
            raise PermissionDenied("this file URL has expired: query the table again for fresh ones")
        table = self.store.table(share, schema, name)  # removed from the share since: gone
        target = await asyncio.to_thread(_inside, table.location.removeprefix("file://"), path)
        return FileResponse(target, media_type="application/octet-stream")

    # ---- admin -------------------------------------------------------------------------------------

    async def admin_create(self, request: Request) -> Response:
        require_admin(request)
        body = await _object(request)
        principal = principal_of(request)
        share = self.store.create_share(body.get("name"), principal.name if principal else None)
        return _json({"name": share.name, "id": share.id})

    async def admin_get(self, request: Request) -> Response:
        require_admin(request)
        name = request.path_params["share"]
        share = self.store.share(name)
        return _json({"name": share.name, "id": share.id, "recipients": self.store.recipients(name),
                      "tables": [{"schema": t.schema, "name": t.name, "location": t.location}
                                 for t in self.store.tables(name)]})

    async def admin_list(self, request: Request) -> Response:
        require_admin(request)
        return _json({"shares": [{"name": share.name, "id": share.id} for share in self.store.shares()]})

    async def admin_delete(self, request: Request) -> Response:
        require_admin(request)
        self.store.delete_share(request.path_params["share"])
        return _json({})

    async def admin_add_table(self, request: Request) -> Response:
        require_admin(request)
        body = await _object(request)
        share, location = request.path_params["share"], body.get("location")
        self.store.share(share)  # 404 before anything is opened
        if isinstance(location, str) and location:
            # Shared as it is found: a location with no Delta table is refused now, not at the first query.
            try:
                await asyncio.to_thread(_open, location, None)
            except NotFound:
                raise InvalidParameterValue(
                    f"location {location!r} holds no Delta table: write the table first, then share it"
                ) from None
        table = self.store.add_table(share, body.get("schema", "default"), body.get("name"),
                                     location)  # the names and the location's type checked there: 400s
        return _json({"share": table.share, "schema": table.schema, "name": table.name, "id": table.id})

    async def admin_remove_table(self, request: Request) -> Response:
        require_admin(request)
        params = request.path_params
        self.store.remove_table(params["share"], params["schema"], params["table"])
        return _json({})

    async def admin_add_recipient(self, request: Request) -> Response:
        require_admin(request)
        body = await _object(request)
        self.store.add_recipient(request.path_params["share"], body.get("principal"))
        return _json({"share": request.path_params["share"], "principal": body.get("principal"),
                      "endpoint": f"{self.base_url}{PREFIX}"})

    async def admin_remove_recipient(self, request: Request) -> Response:
        require_admin(request)
        self.store.remove_recipient(request.path_params["share"], request.path_params["principal"])
        return _json({})

    def routes(self) -> list[BaseRoute]:
        one = f"{PREFIX}/shares/{{share}}"
        table = f"{one}/schemas/{{schema}}/tables/{{table}}"
        return [
            Route(f"{PREFIX}/shares", self.list_shares, methods=["GET"]),
            Route(one, self.get_share, methods=["GET"]),
            Route(f"{one}/schemas", self.list_schemas, methods=["GET"]),
            Route(f"{one}/schemas/{{schema}}/tables", self.list_tables, methods=["GET"]),
            Route(f"{one}/all-tables", self.list_tables, methods=["GET"]),
            Route(f"{table}/version", self.version, methods=["GET"]),
            Route(f"{table}/metadata", self.metadata, methods=["GET"]),
            Route(f"{table}/query", self.query, methods=["POST"]),
            Route(FILES_PATH, self.file, methods=["GET"]),
            Route(ADMIN, self.admin_list, methods=["GET"]),
            Route(ADMIN, self.admin_create, methods=["POST"]),
            Route(f"{ADMIN}/{{share}}", self.admin_get, methods=["GET"]),
            Route(f"{ADMIN}/{{share}}", self.admin_delete, methods=["DELETE"]),
            Route(f"{ADMIN}/{{share}}/tables", self.admin_add_table, methods=["POST"]),
            Route(f"{ADMIN}/{{share}}/tables/{{schema}}/{{table}}", self.admin_remove_table,
                  methods=["DELETE"]),
            Route(f"{ADMIN}/{{share}}/recipients", self.admin_add_recipient, methods=["POST"]),
            Route(f"{ADMIN}/{{share}}/recipients/{{principal}}", self.admin_remove_recipient,
                  methods=["DELETE"]),
        ]


async def _object(request: Request) -> dict[str, Any]:
    from router.auth.limits import loads_json

    body = loads_json(await request.body())
    if not isinstance(body, dict):
        raise InvalidParameterValue("the request body must be a JSON object")
    return body


def _inside(root: str, path: str) -> str:
    """``root/path`` when it is a file inside ``root`` (a signed path cannot climb out of its table)."""
    root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root, path))
    if not target.startswith(root + os.sep) or not os.path.isfile(target):
        raise NotFound("the file is not part of the table any more")
    return target


class TableUnreadable(StoreError):
    """The shared table's store could not be reached, or its log could not be read (502)."""


def _open(location: str, version: int | None) -> Any:
    """The Delta table at ``location`` (at ``version``, or its latest). A recipient's question gets a
    4xx: no table there (404), a version it never had (400); the server's own trouble a 502 that names
    the store: unreachable, or a log that cannot be read."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    options = delta_storage_options(location)
    try:
        return DeltaTable(location, version=version, storage_options=options)
    except TableNotFoundError:
        raise NotFound(f"the shared table's data is not there (no Delta table at {location})") from None
    except OSError as error:  # the store did not answer (deltalake's I/O errors after its retries)
        raise TableUnreadable(f"the shared table's store cannot be reached: {_first_line(error)}") from None
    except Exception as error:
        if version is not None:
            latest = _open(location, None).version()
            if version > latest:
                raise InvalidParameterValue(
                    f"version {version} of the table does not exist; its latest version is {latest}"
                ) from None
        raise TableUnreadable(f"the shared table cannot be read: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    # deltalake's messages carry a multi-line backtrace of the Rust kernel after the first line.
    return str(error).strip().split("\n", 1)[0]


def _protocol() -> dict[str, Any]:
    return {"protocol": {"minReaderVersion": 1}}


def _metadata(table: SharedTable, delta: Any) -> dict[str, Any]:
    metadata = delta.metadata()
    return {"metaData": {
        "id": table.id,
        "name": table.name,
        "format": {"provider": "parquet", "options": {}},
        "schemaString": delta.schema().to_json(),
        "partitionColumns": list(metadata.partition_columns),
        "configuration": dict(metadata.configuration or {}),
        "version": delta.version(),
    }}
