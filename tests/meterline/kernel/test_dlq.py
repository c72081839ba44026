"""Dead-letter records: the reason headers, and copies cut to fit the DLQ topic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meterline.kernel.dlq import DEFAULT_MAX_BYTES, cut_short, dead_letter, max_bytes_of, record_size
from meterline.kernel.headers import TRUNCATED_HEADER
from meterline.kernel.topics import REJECTED


def test_a_copy_that_fits_is_the_original_with_the_reason_headers() -> None:
    out = dead_letter(b"raw", b"key", "malformed", "not JSON", "test", "meterline.raw", 3, 42)
    assert (out.topic, out.value, out.key, out.partition) == (REJECTED, b"raw", b"key", None)
    assert dict(out.headers or []) == {
        "meterline.reason": b"malformed",
        "meterline.detail": b"not JSON",
        "meterline.stage": b"test",
        "meterline.source.topic": b"meterline.raw",
        "meterline.source.partition": b"3",
        "meterline.source.offset": b"42",
    }
    assert not cut_short(out, b"raw")


def test_a_copy_too_large_keeps_the_longest_prefix_that_fits() -> None:
    original = bytes(range(256)) * 5000  # 1,280,000 bytes
    out = dead_letter(original, b"acme", "too_large", "big", "test", "meterline.raw", 0, 7)
    headers = dict(out.headers or [])
    assert headers[TRUNCATED_HEADER] == b"1280000"
    assert original.startswith(out.value or b"")
    assert record_size(out.value or b"", out.key, out.headers or []) == DEFAULT_MAX_BYTES
    assert cut_short(out, original)


def test_a_copy_of_a_record_the_publisher_cut_keeps_its_original_length() -> None:
    out = dead_letter(
        b"prefix", None, "too_large", "cut", "test", "meterline.raw", 0, 7, truncated=b"2000000"
    )
    assert dict(out.headers or [])[TRUNCATED_HEADER] == b"2000000"
    cut = dead_letter(
        b"x" * 500, None, "too_large", "cut", "test", "t", 0, 7, truncated=b"2000000", max_bytes=900
    )
    assert [value for name, value in cut.headers or [] if name == TRUNCATED_HEADER] == [b"2000000"]


def test_an_oversized_key_is_dropped() -> None:
    out = dead_letter(b"v", b"k" * 5000, "malformed", "x", "test", "t", 0, 1, max_bytes=2000)
    assert out.key is None
    assert out.value == b"v"
    assert record_size(out.value or b"", out.key, out.headers or []) <= 2000


@given(
    value=st.integers(0, 5000),
    key=st.integers(0, 300),
    detail=st.text(max_size=2000),
    max_bytes=st.integers(1200, 6000),
)
def test_every_copy_fits_and_keeps_all_it_can(value: int, key: int, detail: str, max_bytes: int) -> None:
    original = b"v" * value
    out = dead_letter(original, b"k" * key, "malformed", detail, "test", "t", 1, 2, max_bytes=max_bytes)
    headers = out.headers or []
    size = record_size(out.value or b"", out.key, headers)
    assert size <= max_bytes
    assert original.startswith(out.value or b"")
    if out.value != original:
        assert dict(headers)[TRUNCATED_HEADER] == str(value).encode()
        assert size == max_bytes  # one more byte would not fit
    else:
        assert TRUNCATED_HEADER not in dict(headers)


def test_the_limit_follows_the_producer_configuration() -> None:
    assert max_bytes_of({}) == DEFAULT_MAX_BYTES == 1_000_000
    assert max_bytes_of({"message.max.bytes": "5000000"}) == 5_000_000
    assert max_bytes_of({"message.max.bytes": "lots"}) == DEFAULT_MAX_BYTES
