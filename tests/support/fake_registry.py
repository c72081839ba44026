"""A STAND-IN for the Confluent Schema Registry, in process, for tests only.

It serves the part of the documented REST API (docs.confluent.io, "Schema Registry
API Reference") that Kafka clients use, over real HTTP on a loopback port:

- POST /subjects/{subject}/versions {"schema", "schemaType"?} -> {"id"}; the same
  schema registered again (under any subject) keeps its id, as ids are global;
- POST /subjects/{subject} {"schema"} -> {"subject", "id", "version", "schema"},
  404 with error_code 40401 (subject not found) or 40403 (schema not found);
- GET /schemas/ids/{id} -> {"schema"}, 404/40403;
- GET /subjects, GET /subjects/{subject}/versions,
  GET /subjects/{subject}/versions/{version|latest} -> {"subject", "id", "version", "schema"},
  404/40401 or 40402 (version not found);
- GET/PUT /config and /config/{subject} {"compatibility"};
- errors as {"error_code", "message"}: 409 for an incompatible schema, 422/42201 for
  an invalid one (and for schema types other than AVRO, which this stand-in lacks),
  401 without the configured basic-auth credentials.

Simplifications, all on the strict side: schemas are compared by their JSON with keys
sorted (the real registry normalizes further), and BACKWARD compatibility (the default)
is checked only for records whose fields keep the same type or are new with a default;
any other change counts as incompatible unless the subject's compatibility is NONE.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import fastavro

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_LEVELS = {
    "NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE",
}  # fmt: skip


class Refused(Exception):
    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


def _canonical(schema: object) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def _backward_compatible(new: Any, old: Any) -> bool:
    """Whether `new` reads what `old` wrote, for the changes this stand-in understands."""
    if _canonical(new) == _canonical(old):
        return True
    if not (isinstance(new, dict) and isinstance(old, dict)):
        return False
    if not new.get("type") == old.get("type") == "record":
        return False
    old_fields = {field["name"]: field for field in old.get("fields", [])}
    for field in new.get("fields", []):
        before = old_fields.get(field["name"])
        if before is None:
            if "default" not in field:
                return False
        elif not _backward_compatible(field["type"], before["type"]):
            return False
    return True


class FakeSchemaRegistry:
    """Start with `with FakeSchemaRegistry() as registry:`; `registry.url` is its address.

    `users` maps user names to passwords; when given, every call needs basic auth.
    `tls` (a server-side SSLContext) makes it serve https.
    """

    def __init__(self, users: dict[str, str] | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.users = dict(users or {})
        self.lock = threading.Lock()
        self.schemas: dict[int, str] = {}  # id -> schema text as registered
        self.ids: dict[str, int] = {}  # canonical schema -> id
        self.subjects: dict[str, list[int]] = {}  # subject -> ids of versions 1, 2, ...
        self.compatibility = "BACKWARD"
        self.subject_compatibility: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path), for tests to inspect
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.scheme = "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host!s}:{port}"

    def __enter__(self) -> FakeSchemaRegistry:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # The API, as plain methods: (status, body) or Refused.

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((method, path))
            for pattern, verb, action in self._routes():
                match = re.fullmatch(pattern, path)
                if match and verb == method:
                    return 200, action(body, *match.groups())
            raise Refused(404, 404, f"HTTP 404 Not Found: {method} {path}")

    def _routes(self) -> list[tuple[str, str, Any]]:
        return [
            (r"/subjects", "GET", lambda body: sorted(self.subjects)),
            (r"/subjects/([^/]+)/versions", "POST", self._register),
            (r"/subjects/([^/]+)/versions", "GET", lambda body, s: [*range(1, len(self._versions(s)) + 1)]),
            (r"/subjects/([^/]+)/versions/([^/]+)", "GET", self._version),
            (r"/subjects/([^/]+)", "POST", self._lookup),
            (r"/schemas/ids/([0-9]+)", "GET", self._schema),
            (r"/config", "GET", lambda body: {"compatibilityLevel": self.compatibility}),
            (r"/config", "PUT", self._set_global_config),
            (r"/config/([^/]+)", "PUT", self._set_subject_config),
        ]

    def _parsed(self, body: Any) -> tuple[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise Refused(422, 42201, "Invalid schema: the request has no schema string")
        if body.get("schemaType", "AVRO") != "AVRO":
            raise Refused(422, 42201, "Invalid schema: this stand-in only knows AVRO")
        try:
            schema = json.loads(body["schema"])
            fastavro.parse_schema(schema)
        except Exception as exc:
            raise Refused(422, 42201, f"Invalid schema {body['schema'][:200]}: {exc}") from None
        return body["schema"], schema

    def _versions(self, subject: str) -> list[int]:
        versions = self.subjects.get(subject)
        if not versions:
            raise Refused(404, 40401, f"Subject '{subject}' not found.")
        return versions

    def _answer(self, subject: str, version: int) -> dict[str, Any]:
        schema_id = self.subjects[subject][version - 1]
        return {"subject": subject, "version": version, "id": schema_id, "schema": self.schemas[schema_id]}

    def _register(self, body: Any, subject: str) -> dict[str, Any]:
        text, schema = self._parsed(body)
        key = _canonical(schema)
        versions = self.subjects.setdefault(subject, [])
        known = self.ids.get(key)
        if known is not None and known in versions:
            return {"id": known}
        level = self.subject_compatibility.get(subject, self.compatibility)
        if versions and level != "NONE":
            latest = json.loads(self.schemas[versions[-1]])
            if not level.startswith("BACKWARD") or not _backward_compatible(schema, latest):
                message = "Schema being registered is incompatible with an earlier schema for subject"
                raise Refused(409, 409, f'{message} "{subject}"')
        if known is None:
            known = self.ids[key] = len(self.schemas) + 1
            self.schemas[known] = text
        versions.append(known)
        return {"id": known}

    def _lookup(self, body: Any, subject: str) -> dict[str, Any]:
        _, schema = self._parsed(body)
        versions = self._versions(subject)
        schema_id = self.ids.get(_canonical(schema))
        if schema_id not in versions:
            raise Refused(404, 40403, "Schema not found")
        return self._answer(subject, versions.index(schema_id) + 1)

    def _version(self, body: Any, subject: str, version: str) -> dict[str, Any]:
        versions = self._versions(subject)
        number = len(versions) if version == "latest" else int(version) if version.isdigit() else 0
        if not 1 <= number <= len(versions):
            raise Refused(404, 40402, f"Version {version} not found.")
        return self._answer(subject, number)

    def _schema(self, body: Any, schema_id: str) -> dict[str, Any]:
        text = self.schemas.get(int(schema_id))
        if text is None:
            raise Refused(404, 40403, "Schema not found")
        return {"schema": text}

    def _level(self, body: Any) -> str:
        level = body.get("compatibility") if isinstance(body, dict) else None
        if level not in _LEVELS:
            raise Refused(422, 42203, f"Invalid compatibility level {level!r}")
        return str(level)

    def _set_global_config(self, body: Any) -> dict[str, str]:
        self.compatibility = self._level(body)
        return {"compatibility": self.compatibility}

    def _set_subject_config(self, body: Any, subject: str) -> dict[str, str]:
        self.subject_compatibility[subject] = self._level(body)
        return {"compatibility": self.subject_compatibility[subject]}

    def _authorized(self, header: str | None) -> bool:
        if not self.users:
            return True
        if header is None or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return self.users.get(user) == password

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def do_PUT(self) -> None:
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    if not registry._authorized(self.headers.get("Authorization")):
                        raise Refused(401, 401, "Unauthorized")
                    try:
                        body = json.loads(raw) if raw else None
                    except ValueError:
                        raise Refused(400, 400, "Unexpected character: the body is not JSON") from None
                    path = self.path.split("?", 1)[0]
                    segments = [unquote(segment) for segment in path.split("/")]
                    status, answer = registry.handle(self.command, "/".join(segments), body)
                except Refused as refused:
                    status = refused.status
                    answer = {"error_code": refused.error_code, "message": str(refused)}
                data = json.dumps(answer).encode()
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="SchemaRegistry"')
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests read `registry.requests` instead

        return Handler
