"""Settings of a meterline process: TOML file, then `METERLINE_*` env vars, then flags.

Any librdkafka property can be passed through under `[kafka]` in the file or as
`METERLINE_KAFKA_<PROPERTY>` (dots written as underscores), so SASL/SCRAM, mTLS
and tuning need no code change.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from meterline.kernel.headers import FORMATS, cdr_zone
from meterline.kernel.topics import Topics, check_prefix


class ConfigError(ValueError):
    """A configuration file, variable or flag a user got wrong."""


@dataclass(frozen=True, slots=True)
class RawTopic:
    name: str
    format: str = "auto"
    # A raw topic keyed by account_id skips the repartition hop before dedup.
    keyed_by_account: bool = False
    # IANA zone of Asterisk CSV times (None: UTC, as Asterisk writes them with usegmtime=yes);
    # a record's `meterline.cdr_timezone` header wins.
    cdr_timezone: str | None = None


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    kafka: Mapping[str, str] = field(default_factory=dict)
    instance_id: str = "0"
    metrics_port: int = 0  # 0 = no HTTP endpoint
    log_level: str = "info"
    partitions: int = 12  # used when meterline creates its topics
    replication_factor: int = 1  # likewise; use 3 on a production cluster
    batch_size: int = 10000
    batch_timeout_s: float = 0.1
    raw_topics: tuple[RawTopic, ...] = (RawTopic("meterline.raw"),)
    max_record_bytes: int = 65536
    out_dir: str = "meterline-out"
    auto_close: bool = True
    close_grace_s: int = 6 * 3600
    preview_interval_s: float = 5.0
    # /healthz turns 503 after this long without a turn of the loop (or of a restore or close step)...
    health_stall_s: float = 120.0
    # ...or with no broker answering for this long.
    broker_timeout_s: float = 60.0
    # Prefix of every topic, consumer group and transactional id of this installation
    # (raw topics included), so that several share a cluster; see Settings.topics.
    topic_prefix: str = ""
    # Optional Confluent Schema Registry: the mediated and rated schemas are registered
    # (or, without auto-register, looked up) at startup and records framed with its ids;
    # without one the ids pinned in schemas/registry.json stay.
    schema_registry_url: str = ""
    schema_registry_user_info: str = ""  # "user:password" for basic auth; a secret, never logged
    schema_registry_ca_location: str = ""  # PEM file of the CA of an https registry
    schema_registry_auto_register: bool = True
    # Catalog of the billing store: "" keeps it in DIR/billing.sqlite (one host); a DuckLake
    # catalog spec such as "postgres:dbname=meterline host=... user=..." lets several
    # consolidation workers on several hosts share it. DuckDB repeats the spec in its
    # connection errors, so a password belongs in PGPASSWORD or a pgpass file instead.
    store_catalog: str = ""
    # Records a consolidation worker takes into one store transaction at most. Each commit
    # costs a fixed ~0.2 s of catalog and file work (bench/RESULTS.md), which a batch this
    # size spreads thin; under light load batches stay small (batch_timeout_s).
    store_batch_size: int = 50000
    # How often a consolidation worker compacts the store's small data files.
    store_maintenance_interval_s: float = 300.0
    # Snapshots (draft history read with `query --at`) are kept this long, then expire.
    draft_history_days: int = 400
    # The customer invoice site: a consolidation worker regenerates the pages of accounts
    # whose drafts changed, at most every preview_interval_s ("" = no site).
    site_dir: str = ""
    # The chained worker (`meterline chained`: mediation and rating in one process) writes
    # no mediated topic unless this asks for it, for consumers downstream of mediation.
    publish_mediated: bool = False

    def __post_init__(self) -> None:
        try:
            check_prefix(self.topic_prefix)
        except ValueError as exc:
            raise ConfigError(f"topic_prefix: {exc}") from None
        if self.schema_registry_user_info and ":" not in self.schema_registry_user_info:
            raise ConfigError("schema_registry_user_info must be user:password")

    @property
    def topics(self) -> Topics:
        """The names of this installation's topics, groups and transactional ids."""
        return Topics(self.topic_prefix)

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


_SCALARS = {f.name: f for f in fields(Settings) if f.name not in ("kafka", "raw_topics")}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = type(getattr(Settings(), name))
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {name} must be a {kind.__name__}, got {value!r}") from exc


_RAW_TOPIC_KEYS = {f.name for f in fields(RawTopic)}


def _raw_topics(items: Any, source: str) -> tuple[RawTopic, ...]:
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{source}: raw_topics must be a non-empty list of tables")
    topics = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"{source}: raw_topics[{i}] needs a name")
        fmt = str(item.get("format", "auto"))
        if fmt not in FORMATS:
            raise ConfigError(f"{source}: raw_topics[{i}].format must be one of {', '.join(FORMATS)}")
        unknown = set(item) - _RAW_TOPIC_KEYS
        if unknown:
            names = ", ".join(sorted(unknown))
            raise ConfigError(f"{source}: raw_topics[{i}] has unknown setting(s) {names}")
        zone = item.get("cdr_timezone")
        if zone is not None:
            try:
                cdr_zone(str(zone))
            except ValueError as exc:
                raise ConfigError(f"{source}: raw_topics[{i}].cdr_timezone: {exc}") from None
        topics.append(
            RawTopic(
                str(item["name"]),
                fmt,
                bool(item.get("keyed_by_account", False)),
                None if zone is None else str(zone),
            )
        )
    return tuple(topics)


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults < file < environment. Flags are applied by the caller with `with_overrides`."""
    values: dict[str, Any] = {}
    kafka: dict[str, str] = {}
    env = os.environ if env is None else env
    path = path or env.get("METERLINE_CONFIG")
    if path:
        source = str(path)
        try:
            document = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{source}: no such config file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
        for key, value in document.items():
            if key == "kafka":
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: [kafka] must be a table of librdkafka properties")
                kafka.update({str(k): str(v) for k, v in value.items()})
            elif key == "raw_topics":
                values["raw_topics"] = _raw_topics(value, source)
            elif key in _SCALARS:
                values[key] = _coerce(key, value, source)
            else:
                raise ConfigError(f"{source}: unknown setting {key!r}")
    for name, value in env.items():
        if not name.startswith("METERLINE_") or name == "METERLINE_CONFIG":
            continue
        key = name[len("METERLINE_") :].lower()
        if key.startswith("kafka_"):
            kafka[key[len("kafka_") :].replace("_", ".")] = value
        elif key in _SCALARS:
            values[key] = _coerce(key, value, name)
    return Settings(kafka=kafka, **values)


def settings_to_toml(settings: Settings) -> str:
    """A meterline.toml that loads back as these settings (the run orchestrator hands it to its workers)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"{name} = {value(getattr(settings, name))}" for name in _SCALARS]
    for topic in settings.raw_topics:
        lines += [
            "",
            "[[raw_topics]]",
            f"name = {value(topic.name)}",
            f"format = {value(topic.format)}",
            f"keyed_by_account = {value(topic.keyed_by_account)}",
        ]
        if topic.cdr_timezone is not None:
            lines.append(f"cdr_timezone = {value(topic.cdr_timezone)}")
    if settings.kafka:
        lines += ["", "[kafka]", *(f"{value(k)} = {value(v)}" for k, v in settings.kafka.items())]
    return "\n".join(lines) + "\n"
