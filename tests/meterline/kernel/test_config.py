"""Settings of raw topics (the Asterisk time zone), the topic prefix and the Schema Registry:
validated when loaded, and kept in the TOML handed to workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterline.kernel.config import ConfigError, RawTopic, Settings, load_settings, settings_to_toml


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "meterline.toml"
    path.write_text(text)
    return load_settings(path, env={})


def test_a_raw_topic_names_its_cdr_timezone(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[[raw_topics]]\nname = "pbx.cdr"\nformat = "asterisk-csv"\ncdr_timezone = "Europe/Paris"\n'
        '[[raw_topics]]\nname = "meterline.raw"\n',
    )
    assert settings.raw_topics == (
        RawTopic("pbx.cdr", "asterisk-csv", cdr_timezone="Europe/Paris"),
        RawTopic("meterline.raw"),
    )


@pytest.mark.parametrize("zone", ["Paris", "Europe", "CEST", "", "../../etc/passwd"])
def test_a_cdr_timezone_that_is_not_an_iana_zone_is_refused(tmp_path: Path, zone: str) -> None:
    with pytest.raises(ConfigError, match=r"raw_topics\[0\]\.cdr_timezone: .* is not an IANA time zone"):
        load(tmp_path, f'[[raw_topics]]\nname = "pbx.cdr"\ncdr_timezone = "{zone}"\n')


def test_a_misspelt_raw_topic_setting_is_refused_not_ignored(tmp_path: Path) -> None:
    # A silently ignored `cdr_time_zone` would bill every call in UTC.
    with pytest.raises(ConfigError, match=r"raw_topics\[0\] has unknown setting\(s\) cdr_time_zone"):
        load(tmp_path, '[[raw_topics]]\nname = "pbx.cdr"\ncdr_time_zone = "Europe/Paris"\n')


def test_workers_get_the_cdr_timezone(tmp_path: Path) -> None:
    settings = Settings(
        raw_topics=(RawTopic("pbx.cdr", "asterisk-csv", True, "America/New_York"), RawTopic("plain"))
    )
    assert load(tmp_path, settings_to_toml(settings)).raw_topics == settings.raw_topics


def test_topic_prefix_names_the_installation(tmp_path: Path) -> None:
    settings = load(tmp_path, 'topic_prefix = "blue."\n')
    assert (settings.topics.rated, settings.topics.group("meterline-mediation")) == (
        "blue.meterline.usage.rated",
        "blue.meterline-mediation",
    )
    assert load(tmp_path, settings_to_toml(settings)).topic_prefix == "blue."
    assert load_settings(env={"METERLINE_TOPIC_PREFIX": "green-"}).topics.raw == "green-meterline.raw"


@pytest.mark.parametrize("prefix", ["blue/", "two words"])
def test_a_topic_prefix_kafka_cannot_use_is_refused(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"topic_prefix: .* may only hold"):
        load(tmp_path, f'topic_prefix = "{prefix}"\n')
    with pytest.raises(ConfigError, match="topic_prefix"):
        Settings().with_overrides(topic_prefix=prefix)


def test_workers_get_the_schema_registry_settings(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        'schema_registry_url = "https://registry:8081"\nschema_registry_user_info = "svc:p@ss:word"\n'
        'schema_registry_ca_location = "/etc/ca.pem"\nschema_registry_auto_register = false\n',
    )
    again = load(tmp_path, settings_to_toml(settings))
    assert (
        again.schema_registry_url,
        again.schema_registry_user_info,
        again.schema_registry_ca_location,
        again.schema_registry_auto_register,
    ) == ("https://registry:8081", "svc:p@ss:word", "/etc/ca.pem", False)
    from_env = load_settings(env={"METERLINE_SCHEMA_REGISTRY_AUTO_REGISTER": "no"})
    assert from_env.schema_registry_auto_register is False


def test_registry_user_info_without_a_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="schema_registry_user_info must be user:password"):
        load(tmp_path, 'schema_registry_user_info = "svc"\n')


def test_registry_credentials_never_reach_a_log_line() -> None:
    from meterline.runtime.logs import _redact

    event = _redact(None, "info", {"event": "x", "schema_registry_user_info": "svc:pw"})
    assert event["schema_registry_user_info"] == "***"
