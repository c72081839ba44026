"""deploy/: the worker image's build context, manifests, alert rules and dashboard.

No Docker daemon, promtool or cluster is needed: these tests read the files and
check what would otherwise only fail at `docker build`, at rule load time or on
a dashboard that silently shows nothing (a typo in a metric name).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import meterline.app.workers  # imports every stage, so every metric a worker exports is registered
import meterline.runtime.health
import meterline.runtime.metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "meterline.json"
STAGES = ("mediation", "rating", "consolidation")


# --------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash paths."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out)


def _ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:].strip() if negated else line
        pattern = pattern.strip("/").removeprefix("./")
        rules.append((negated, _pattern_regex(pattern)))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negated, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


def test_ignore_matcher_follows_docker_semantics() -> None:
    rules = _ignore_rules("*\n!pkg\n**/__pycache__\n")
    assert excluded("setup.py", rules)
    assert not excluded("pkg/module.py", rules)
    assert excluded("pkg/__pycache__/module.pyc", rules)
    assert excluded(".venv/bin/python", rules)


def _copy_sources(text: str) -> list[str]:
    """Sources of every COPY/ADD from the build context (not `--from=` another stage)."""
    sources: list[str] = []
    logical = re.sub(r"\\\n", " ", text)
    for line in logical.splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]):
            continue
        sources.extend(args[:-1])
    return sources


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    """The image copied setup.py, which the ignore file left out: `docker build` failed."""
    rules = _ignore_rules(DOCKERIGNORE.read_text())
    sources = _copy_sources(DOCKERFILE.read_text())
    assert "setup.py" in sources and "pyproject.toml" in sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file in the repository"
        assert not excluded(source, rules), f"COPY {source}: left out of the context by {DOCKERIGNORE.name}"
        if path.is_dir():
            files = [
                f.relative_to(ROOT).as_posix()
                for f in path.rglob("*")
                if f.is_file() and "__pycache__" not in f.parts and not f.name.endswith(".so")
            ]
            assert files, source
            left_out = [f for f in files if excluded(f, rules)]
            assert not left_out, f"COPY {source}: {left_out[:5]} left out of the context"


def test_package_data_and_readme_reach_the_image() -> None:
    rules = _ignore_rules(DOCKERIGNORE.read_text())
    for needed in ("schemas/catalog.schema.json", "README.md", "setup.py", "pyproject.toml"):
        assert not excluded(needed, rules), needed
    kept_out_paths = (
        ".venv/bin/python",
        ".git/HEAD",
        "meterline-out/billing.duckdb",
        "tests/conftest.py",
        "rating/pricing.cpython-311-x86_64-linux-gnu.so",  # built in place for the host by make
        "meterline/__pycache__/cli.cpython-311.pyc",
    )
    for kept_out in kept_out_paths:
        assert excluded(kept_out, rules), kept_out


# --------------------------------------------------------------------------- files parse


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_files_parse(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents and all(isinstance(d, dict) for d in documents)


def test_json_and_toml_files_parse() -> None:
    for path in DEPLOY.rglob("*.json"):
        assert isinstance(json.loads(path.read_text()), dict), path
    tomllib.loads((DEPLOY / "meterline.toml").read_text())
    configmap = yaml.safe_load((DEPLOY / "kubernetes" / "configmap.yaml").read_text())
    tomllib.loads(configmap["data"]["meterline.toml"])


# --------------------------------------------------------------------------- metric names


def _registry() -> dict[str, tuple[str, frozenset[str]]]:
    """Every sample name meterline exports -> (family, label names)."""
    names: dict[str, tuple[str, frozenset[str]]] = {}
    collectors = REGISTRY._collector_to_names  # labelled metrics without children have no samples yet
    for collector in collectors:
        if not hasattr(collector, "describe"):
            continue  # process and GC collectors
        labels = frozenset(getattr(collector, "_labelnames", ()))
        for family in collector.describe():
            if not family.name.startswith("meterline_"):
                continue
            suffixes = {
                "counter": ("_total",),
                "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",),
            }.get(family.type, ("",))
            for suffix in suffixes:
                names[family.name + suffix] = (family.name, labels)
    return names


# Labels the scrape job adds (prometheus.yml) or Prometheus itself uses.
_TARGET_LABELS = frozenset({"job", "instance", "stage", "pod", "le"})
_SELECTOR = re.compile(r"(?<![\w:])(meterline_[a-z0-9_]+)(?![\w:])(\{[^}]*\})?")


def _selectors(expr: str) -> Iterator[tuple[str, list[str]]]:
    for match in _SELECTOR.finditer(expr):
        labels = re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", match.group(2) or "")
        yield match.group(1), labels


def _rule_expressions() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def _alert_expressions() -> Iterator[tuple[str, str]]:
    yield from _rule_expressions()
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for series in test.get("input_series", ()):
            yield "alerts.test.yml", series["series"]


def _dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", ()))
    return panels


def _dashboard_expressions() -> Iterator[tuple[str, str]]:
    for panel in _dashboard_panels():
        for target in panel.get("targets", ()):
            yield panel["title"], target["expr"]
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if isinstance(variable.get("query"), dict):
            yield variable["name"], variable["query"]["query"]


def test_every_metric_in_alerts_and_dashboard_is_exported() -> None:
    """A typo'd metric name makes an alert that never fires and a panel that shows nothing."""
    registry = _registry()
    used: set[str] = set()
    for where, expr in [*_alert_expressions(), *_dashboard_expressions()]:
        for name, labels in _selectors(expr):
            assert name in registry, f"{where}: {name} is not a meterline metric"
            used.add(name)
            unknown = set(labels) - registry[name][1] - _TARGET_LABELS
            assert not unknown, f"{where}: {name} has no label {sorted(unknown)}"
    assert len(used) > 20


def test_alerts_cover_containment_and_health() -> None:
    rules = dict(_rule_expressions())
    wanted = {
        "MeterlineInternalErrors": "meterline_internal_errors_total",
        "MeterlineCloseAccountsSkipped": "meterline_close_accounts_skipped_total",
        "MeterlineControlRecordsSkipped": "meterline_control_records_skipped_total",
        "MeterlineRepeatedAborts": "meterline_consecutive_aborts",
        "MeterlineNoProgress": "meterline_last_progress_timestamp_seconds",
        "MeterlineUnhealthy": "meterline_healthy",
    }
    for alert, metric in wanted.items():
        assert metric in rules.get(alert, ""), alert
    assert 'reason="internal_error"' in rules["MeterlineInternalErrors"]
    assert "== 0" in rules["MeterlineUnhealthy"]
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
                assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_consumer_lag_covers_every_stage() -> None:
    """Consolidation reports lag like the other stages: nothing may filter it out."""
    lag = [e for _, e in [*_rule_expressions(), *_dashboard_expressions()] if "meterline_consumer_lag" in e]
    assert len(lag) >= 2
    only_some = re.compile(r'meterline_consumer_lag\{[^}]*stage\s*(=|!=)\s*"(mediation|rating)"')
    for expr in lag:
        assert not only_some.search(expr), expr
    assert "consolidation exports no consumer lag" not in ALERTS.read_text()


# --------------------------------------------------------------------------- dashboard


def test_rejected_share_divides_by_each_stages_input() -> None:
    """It divided all stages' rejections by the sum of all stages' input."""
    (panel,) = [p for p in _dashboard_panels() if p["title"].startswith("Rejected share")]
    (expr,) = [t["expr"] for t in panel["targets"]]
    numerator, denominator = expr.split(" / ")
    assert numerator.startswith("sum by (stage) (rate(meterline_events_rejected_total")
    assert denominator.startswith("sum by (stage) (rate(meterline_events_consumed_total")


def test_conservation_panel_balances_in_against_outcomes() -> None:
    (panel,) = [p for p in _dashboard_panels() if p["title"].startswith("Conservation:")]
    exprs = {t["legendFormat"]: t["expr"] for t in panel["targets"]}
    assert {"in", "rated", "duplicates", "rejected", "unaccounted"} <= set(exprs)
    assert 'stage="mediation"' in exprs["in"] and "meterline.usage.repartition" in exprs["in"]
    for metric in ("meterline_events_rated_total", "meterline_events_deduplicated_total",
                   "meterline_events_rejected_total"):  # fmt: skip
        assert metric in exprs["unaccounted"]


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = _dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


# --------------------------------------------------------------------------- Kubernetes


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d is not None]


def _statefulsets() -> dict[str, dict[str, Any]]:
    return {
        stage: next(d for d in _documents(f"{stage}.yaml") if d["kind"] == "StatefulSet") for stage in STAGES
    }


def _seconds(probe: dict[str, Any]) -> int:
    return int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))


def test_probes_use_healthz_with_sane_timing() -> None:
    health = meterline.runtime.health.Health()
    for stage, statefulset in _statefulsets().items():
        (container,) = statefulset["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container[kind]
            assert probe["httpGet"]["path"] == "/healthz", (stage, kind)
            assert ports[probe["httpGet"]["port"]] == 9464, (stage, kind)
            assert probe.get("timeoutSeconds", 1) >= 2, (stage, kind)
        # Restores of large state take minutes before the first 200.
        assert _seconds(container["startupProbe"]) >= 300, stage
        # /healthz already waits out broker blips (60 s) and stalls (120 s); liveness adds a
        # margin so a short broker outage does not restart every pod into a back-off loop.
        assert _seconds(container["livenessProbe"]) >= max(health.broker_timeout_s, 120), stage
        assert _seconds(container["livenessProbe"]) <= 600, stage
        assert _seconds(container["readinessProbe"]) <= _seconds(container["livenessProbe"]), stage
        assert "--metrics-port" in container["args"] and "9464" in container["args"]


# --------------------------------------------------------------------------- billing store

COMPOSE = DEPLOY / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _libpq_params(catalog: str) -> dict[str, str]:
    assert catalog.startswith("postgres:"), catalog
    return dict(pair.split("=", 1) for pair in catalog.removeprefix("postgres:").split())


def test_compose_runs_postgres_for_the_store_catalog() -> None:
    postgres = _compose()["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["environment"]["POSTGRES_DB"] == "meterline"


def test_compose_consolidation_workers_share_the_postgres_store() -> None:
    compose = _compose()
    services = compose["services"]
    workers = {name: s for name, s in services.items() if s.get("command", [None])[0] == "consolidation"}
    assert len(workers) >= 2
    ids = [_flag(w["command"], "--instance-id") for w in workers.values()]
    assert len(set(ids)) == len(ids), ids
    mounts = set()
    for name, worker in workers.items():
        env = worker["environment"]
        params = _libpq_params(env["METERLINE_STORE_CATALOG"])
        assert (
            params["host"] == "postgres"
            and params["dbname"] == services["postgres"]["environment"]["POSTGRES_DB"]
        )
        assert "password" not in params, f"{name}: the password belongs in PGPASSWORD"
        assert env["PGPASSWORD"] and env["METERLINE_CONFIG"]
        assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
        out = _flag(worker["command"], "--out")
        (store,) = [v for v in worker["volumes"] if not v.endswith(":ro")]
        volume, path = store.split(":")
        assert out.startswith(path.rstrip("/") + "/"), (name, out, path)
        assert volume in compose["volumes"], volume  # a named volume, not a folder per worker
        mounts.add(store)
    assert len(mounts) == 1, f"the consolidation workers mount different store volumes: {mounts}"


def test_prometheus_scrapes_every_compose_worker() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    targets = {
        target.split(":")[0]: group["labels"]["stage"]
        for job in scrape
        for group in job["static_configs"]
        for target in group["targets"]
    }
    workers = {
        name: s["command"][0]
        for name, s in _compose()["services"].items()
        if s.get("command", [""])[0] in STAGES
    }
    assert targets == workers


def test_kubernetes_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert _documents(resource), resource
    assert "postgres.yaml" in kustomization["resources"]


def test_kubernetes_consolidation_scales_out_on_a_shared_store() -> None:
    statefulset = _statefulsets()["consolidation"]
    assert statefulset["spec"]["replicas"] >= 2
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert _flag(container["args"], "--instance-id") == "$(POD_NAME)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["METERLINE_STORE_CATALOG"]["valueFrom"]["secretKeyRef"] == {
        "name": "meterline-store",
        "key": "catalog",
    }
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "meterline-store", "key": "password"}
    # One volume for all pods (no per-pod claim), writable from every node.
    assert "volumeClaimTemplates" not in statefulset["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    out = _flag(container["args"], "--out")
    (store,) = [name for name, path in mounts.items() if out.startswith(path.rstrip("/") + "/")]
    claim = volumes[store]["persistentVolumeClaim"]["claimName"]
    (pvc,) = [d for d in _documents("consolidation.yaml") if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == claim
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_kubernetes_store_secret_and_postgres_agree() -> None:
    secrets = {d["metadata"]["name"]: d for d in _documents("secret.yaml")}
    store = secrets["meterline-store"]["stringData"]
    params = _libpq_params(store["catalog"])
    assert "password" not in params and store["password"]
    services = {d["metadata"]["name"]: d for d in _documents("services.yaml")}
    assert params["host"] in services
    (postgres,) = [d for d in _documents("postgres.yaml") if d["kind"] == "StatefulSet"]
    (container,) = postgres["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "postgres:16"
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_DB"]["value"] == params["dbname"]
    assert env["POSTGRES_USER"]["value"] == params["user"]
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "meterline-store",
        "key": "password",
    }
    selector = services[params["host"]]["spec"]["selector"]
    assert selector.items() <= postgres["spec"]["template"]["metadata"]["labels"].items()
    assert (
        postgres["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    )  # restricted namespace


# --------------------------------------------------------------------------- dependencies


def test_tzdata_is_a_dependency() -> None:
    """Slim images have no /usr/share/zoneinfo: zone names must resolve from the package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(re.match(r"tzdata\b", dep) for dep in project["dependencies"])
    import tzdata  # noqa: F401  (installed with the project)


def test_example_config_lists_every_setting() -> None:
    """deploy/meterline.toml says it holds every setting: keep it true."""
    from dataclasses import fields

    from meterline.kernel.config import Settings, load_settings

    text = (DEPLOY / "meterline.toml").read_text()
    for setting in fields(Settings):
        if setting.name == "kafka":
            assert re.search(r"^#? ?\[kafka\]", text, re.M)
        elif setting.name == "raw_topics":
            assert "[[raw_topics]]" in text
        else:
            assert re.search(rf"^#? ?{setting.name} = ", text, re.M), setting.name
    load_settings(DEPLOY / "meterline.toml", env={})  # and it loads


def test_alert_unit_tests_name_existing_alerts() -> None:
    alerts = {name for name, _ in _rule_expressions()}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", ())
    }
    assert tested <= alerts, tested - alerts
    for new in ("MeterlineInternalErrors", "MeterlineCloseAccountsSkipped", "MeterlineUnhealthy",
                "MeterlineRepeatedAborts"):  # fmt: skip
        assert new in tested
