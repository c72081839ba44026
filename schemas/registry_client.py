"""Optional Confluent Schema Registry: the schema ids of the mediated and rated topics.

With a registry, each worker registers (or, with `register=False`, only looks up)
usage_mediated.avsc and usage_rated.avsc under the subjects `<topic>-value` (the
TopicNameStrategy of Kafka Connect and the Confluent serializers) at startup, and
frames its records with the ids the registry gives (`codec.configure`). Registering
a schema the subject already holds returns its id, so every worker of a deployment
ends up with the same ids. Without a registry the ids pinned in registry.json stay.

Plain HTTP through the standard library: a few calls at startup, never on the hot path.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, TypedDict, Unpack

import structlog

from schemas.codec import MEDIATED_FILE, RATED_FILE, SchemaIds, configure

CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"

log = structlog.get_logger()


class RegistryError(RuntimeError):
    """The registry refused a call (status and Confluent error_code when it answered), or
    did not answer in time."""

    def __init__(self, message: str, status: int | None = None, error_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


def subject_for(topic: str) -> str:
    """The subject of a topic's values (TopicNameStrategy)."""
    return f"{topic}-value"


def schema_text(file: str) -> str:
    """An .avsc file as the compact JSON text that is registered."""
    text = resources.files("schemas").joinpath(file).read_text()
    return json.dumps(json.loads(text), separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Registry:
    """Where the registry is and how to talk to it.

    `user_info` is "user:password" for HTTP basic auth (the Confluent clients'
    basic.auth.user.info); `ca_location` a PEM file of the CA that signed an https
    registry's certificate (the system's CAs otherwise).
    """

    url: str
    user_info: str = ""
    ca_location: str = ""
    timeout_s: float = 10.0

    def register(self, subject: str, schema: str) -> int:
        """POST /subjects/{subject}/versions: the id of `schema`, registered if new."""
        answer = self.call("POST", f"/subjects/{_quote(subject)}/versions", {"schema": schema})
        return _id(answer)

    def lookup(self, subject: str, schema: str) -> int:
        """POST /subjects/{subject}: the id of `schema`, which must be registered there."""
        answer = self.call("POST", f"/subjects/{_quote(subject)}", {"schema": schema})
        return _id(answer)

    def schema(self, schema_id: int) -> str:
        """GET /schemas/ids/{id}: the schema text of an id."""
        answer = self.call("GET", f"/schemas/ids/{schema_id}")
        if not isinstance(answer, dict) or not isinstance(answer.get("schema"), str):
            raise RegistryError(f"no schema in the answer for id {schema_id}")
        return str(answer["schema"])

    def latest(self, subject: str) -> dict[str, Any]:
        """GET /subjects/{subject}/versions/latest: subject, id, version and schema."""
        answer = self.call("GET", f"/subjects/{_quote(subject)}/versions/latest")
        if not isinstance(answer, dict):
            raise RegistryError(f"unexpected answer for the latest version of {subject}")
        return answer

    def call(self, method: str, path: str, body: object = None) -> Any:
        """One request; a refusal raises RegistryError with the registry's message."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method)
        request.add_header("Accept", CONTENT_TYPE)
        if data is not None:
            request.add_header("Content-Type", CONTENT_TYPE)
        if self.user_info:
            request.add_header("Authorization", "Basic " + base64.b64encode(self.user_info.encode()).decode())
        context = None
        if self.url.startswith("https:"):
            context = ssl.create_default_context(cafile=self.ca_location or None)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise _refusal(method, path, error) from None
        except (OSError, ValueError) as error:  # URLError, refused, timeout, TLS; unreadable JSON
            raise RegistryError(f"{method} {path}: {type(error).__name__}: {error}") from None


class ResolveOptions(TypedDict, total=False):
    """The keyword options of resolve_ids, which use_registry passes on."""

    user_info: str
    ca_location: str
    register: bool
    timeout_s: float
    retry_s: float


def resolve_ids(
    url: str,
    mediated_topic: str,
    rated_topic: str,
    *,
    user_info: str = "",
    ca_location: str = "",
    register: bool = True,
    timeout_s: float = 10.0,
    retry_s: float = 30.0,
) -> SchemaIds:
    """The registry's ids of the mediated and rated schemas, under `<topic>-value`.

    `register=False` only looks the schemas up (for registries where a deployment
    pipeline registers schemas and clients may not). A registry that does not answer,
    or answers 5xx, is asked again for up to `retry_s` seconds (workers often start
    beside it); a refusal (401, 404, 409 incompatible, 422 invalid) raises at once.
    """
    registry = Registry(url, user_info, ca_location, timeout_s)
    deadline = time.monotonic() + retry_s
    delay = 0.2
    while True:
        try:
            return SchemaIds(
                _resolve(registry, subject_for(mediated_topic), MEDIATED_FILE, register),
                _resolve(registry, subject_for(rated_topic), RATED_FILE, register),
            )
        except RegistryError as error:
            if (error.status is not None and error.status < 500) or time.monotonic() + delay > deadline:
                raise
            log.warning(
                "schema_registry_unavailable", url=_without_user_info(url), error=str(error), retry_in_s=delay
            )
            time.sleep(delay)  # a backoff between startup attempts, not a wait on a state
            delay = min(delay * 2, 5.0)


def use_registry(
    url: str, mediated_topic: str, rated_topic: str, **options: Unpack[ResolveOptions]
) -> SchemaIds:
    """resolve_ids, then frame and expect those ids in every record (codec.configure)."""
    ids = resolve_ids(url, mediated_topic, rated_topic, **options)
    configure(ids)
    log.info("schema_ids", registry=_without_user_info(url), mediated=ids.mediated, rated=ids.rated)
    return ids


def _resolve(registry: Registry, subject: str, file: str, register: bool) -> int:
    schema = schema_text(file)
    return registry.register(subject, schema) if register else registry.lookup(subject, schema)


def _without_user_info(url: str) -> str:
    """A URL safe to log: credentials written into it (user:password@) left out."""
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _id(answer: object) -> int:
    schema_id = answer.get("id") if isinstance(answer, dict) else None
    if type(schema_id) is not int or not 0 <= schema_id < 2**32:
        raise RegistryError(f"the registry answered no usable schema id: {answer!r}")
    return schema_id


def _refusal(method: str, path: str, error: urllib.error.HTTPError) -> RegistryError:
    """The registry's {"error_code", "message"} body, when it sent one."""
    code: int | None = None
    message = error.reason
    try:
        body = json.loads(error.read())
        if isinstance(body, dict):
            code = body.get("error_code") if type(body.get("error_code")) is int else None
            message = str(body.get("message", message))
    except (OSError, ValueError):
        pass
    finally:
        error.close()
    return RegistryError(f"{method} {path}: {error.code} {message}", error.code, code)
