"""Schema ids from a Schema Registry (the in-process stand-in of tests/support), and the
pinned ids without one."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from meterline.kernel.records import UsageEvent
from schemas.codec import MEDIATED_FILE, PINNED, RATED_FILE, SchemaIds, configure, decode_usage, encode_usage
from schemas.registry_client import (
    Registry,
    RegistryError,
    _without_user_info,
    resolve_ids,
    schema_text,
    use_registry,
)
from tests.support.fake_registry import FakeSchemaRegistry

MEDIATED_TOPIC = "meterline.usage.mediated"
RATED_TOPIC = "meterline.usage.rated"
EVENT = UsageEvent("e-1", "acct", "calls", Decimal("1.25"), datetime(2026, 9, 1, tzinfo=UTC), {})


@pytest.fixture(autouse=True)
def pinned_ids() -> Iterator[None]:
    configure(PINNED)
    yield
    configure(PINNED)


@pytest.fixture
def registry() -> Iterator[FakeSchemaRegistry]:
    with FakeSchemaRegistry() as running:
        yield running


def test_without_a_registry_the_pinned_ids_frame_the_records() -> None:
    assert encode_usage(EVENT)[:5] == b"\x00" + PINNED.mediated.to_bytes(4, "big")


def test_the_subjects_of_both_topics_are_registered_and_their_ids_used(registry: FakeSchemaRegistry) -> None:
    registry.handle("POST", "/subjects/other-value/versions", {"schema": '"string"'})  # ids are global
    ids = use_registry(registry.url, MEDIATED_TOPIC, RATED_TOPIC)
    assert ids == SchemaIds(2, 3)
    client = Registry(registry.url)
    for topic, file, schema_id in ((MEDIATED_TOPIC, MEDIATED_FILE, 2), (RATED_TOPIC, RATED_FILE, 3)):
        latest = client.latest(f"{topic}-value")
        assert (latest["id"], latest["version"]) == (schema_id, 1)
        assert json.loads(client.schema(schema_id)) == json.loads(schema_text(file))
    data = encode_usage(EVENT)
    assert data[:5] == b"\x00\x00\x00\x00\x02"
    assert decode_usage(data) == EVENT
    # Every worker registers at startup: the same schemas keep their ids and versions.
    assert resolve_ids(registry.url, MEDIATED_TOPIC, RATED_TOPIC) == ids
    assert client.call("GET", f"/subjects/{RATED_TOPIC}-value/versions") == [1]


def test_look_up_only_needs_the_schemas_registered_beforehand(registry: FakeSchemaRegistry) -> None:
    with pytest.raises(RegistryError) as refused:
        resolve_ids(registry.url, MEDIATED_TOPIC, RATED_TOPIC, register=False)
    assert (refused.value.status, refused.value.error_code) == (404, 40401)
    registered = resolve_ids(registry.url, MEDIATED_TOPIC, RATED_TOPIC)
    # A later version under the subject: the lookup still finds ours.
    registry.handle("PUT", f"/config/{RATED_TOPIC}-value", {"compatibility": "NONE"})
    registry.handle("POST", f"/subjects/{RATED_TOPIC}-value/versions", {"schema": '"string"'})
    assert resolve_ids(registry.url, MEDIATED_TOPIC, RATED_TOPIC, register=False) == registered
    posts = [path for method, path in registry.requests[-2:] if method == "POST"]
    assert posts == [f"/subjects/{MEDIATED_TOPIC}-value", f"/subjects/{RATED_TOPIC}-value"]


def test_an_incompatible_earlier_version_is_a_409_and_compatibility_none_lets_it_through(
    registry: FakeSchemaRegistry,
) -> None:
    # The previous version of the rated schema carried decimals as text: not BACKWARD compatible.
    old = json.loads(schema_text(RATED_FILE))
    for field in old["fields"]:
        if isinstance(field["type"], dict) and field["type"].get("logicalType") == "decimal":
            field["type"] = "string"
    Registry(registry.url).register(f"{RATED_TOPIC}-value", json.dumps(old))
    with pytest.raises(RegistryError, match="incompatible") as refused:
        resolve_ids(registry.url, MEDIATED_TOPIC, RATED_TOPIC)
    assert (refused.value.status, refused.value.error_code) == (409, 409)
    Registry(registry.url).call("PUT", f"/config/{RATED_TOPIC}-value", {"compatibility": "NONE"})
    assert resolve_ids(registry.url, MEDIATED_TOPIC, RATED_TOPIC).rated == 3


def test_an_invalid_schema_is_a_422(registry: FakeSchemaRegistry) -> None:
    with pytest.raises(RegistryError) as refused:
        Registry(registry.url).register("x-value", '{"type": "record", "name": "R", "fields": [{"name": 1}]}')
    assert (refused.value.status, refused.value.error_code) == (422, 42201)


def test_basic_auth_credentials_are_sent_and_a_refusal_is_not_retried() -> None:
    with FakeSchemaRegistry(users={"meterline": "s3cret"}) as registry:
        with pytest.raises(RegistryError, match="401 Unauthorized") as refused:
            resolve_ids(registry.url, MEDIATED_TOPIC, RATED_TOPIC, user_info="meterline:wrong", retry_s=60)
        assert refused.value.status == 401
        assert "wrong" not in str(refused.value)
        assert len(registry.requests) == 0  # refused before routing, and asked once
        ids = resolve_ids(registry.url, MEDIATED_TOPIC, RATED_TOPIC, user_info="meterline:s3cret")
        assert ids == SchemaIds(1, 2)


def test_a_registry_that_does_not_answer_fails_the_startup() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(RegistryError, match="Connection refused"):
            resolve_ids(f"http://127.0.0.1:{port}", MEDIATED_TOPIC, RATED_TOPIC, retry_s=0.5)
    assert encode_usage(EVENT)[:5] == b"\x00" + PINNED.mediated.to_bytes(4, "big")


def test_an_https_registry_is_trusted_through_the_given_ca(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with FakeSchemaRegistry(tls=tls) as registry:
        assert registry.url.startswith("https://")
        with pytest.raises(RegistryError, match="CERTIFICATE_VERIFY_FAILED"):
            resolve_ids(registry.url, MEDIATED_TOPIC, RATED_TOPIC, retry_s=0)
        ids = resolve_ids(registry.url, MEDIATED_TOPIC, RATED_TOPIC, ca_location=str(cert))
        assert ids == SchemaIds(1, 2)


def test_logged_urls_leave_credentials_out() -> None:
    assert _without_user_info("https://u:p@registry:8081/x") == "https://registry:8081/x"
    assert _without_user_info("http://registry:8081") == "http://registry:8081"
