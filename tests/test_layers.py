"""The direction of imports between meterline's parts.

- the kernel (meterline.kernel) holds no Kafka client, no metrics, and nothing of the
  runtime, the app or a stage;
- the stages' transforms (mediation, rating) build on the kernel and schemas alone:
  plain code that the runtime runs, alone or chained, and that tests run without Kafka;
- the runtime (meterline.runtime) never imports a stage or the app;
- the app (meterline.app) is the only part of meterline that knows every stage.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("mediation", "rating", "consolidation")


def imports_of(package: str) -> dict[str, set[str]]:
    """Every module a package's modules import (at any depth of the code), by module."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[module] = names
    return found


def offending(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {
        module: sorted(n for n in names if n.split(".")[0] in forbidden or n.startswith(forbidden))
        for module, names in imports_of(package).items()
        if any(n.split(".")[0] in forbidden or n.startswith(forbidden) for n in names)
    }


def test_the_kernel_imports_no_kafka_client_runtime_app_or_stage() -> None:
    forbidden = ("confluent_kafka", "prometheus_client", "meterline.runtime", "meterline.app", *STAGES)
    assert offending("meterline.kernel", forbidden) == {}


def test_stage_transforms_import_only_the_kernel() -> None:
    forbidden = (
        "confluent_kafka",
        "prometheus_client",
        "meterline.runtime",
        "meterline.app",
        "consolidation",
    )
    assert offending("mediation", forbidden) == {}
    assert offending("rating", forbidden) == {}


def test_the_runtime_never_imports_a_stage_or_the_app() -> None:
    assert offending("meterline.runtime", ("meterline.app", *STAGES)) == {}


def test_importing_the_kernel_and_the_stages_loads_no_kafka_client() -> None:
    """The same, as Python sees it: whatever imports what, transitively."""
    modules = sorted(
        module
        for package in ("meterline.kernel", "mediation", "rating")
        for module in imports_of(package)
        if not module.endswith("__init__")
    )
    probe = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in "
        "('confluent_kafka', 'prometheus_client', 'consolidation') "
        "or n.startswith(('meterline.runtime', 'meterline.app'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert len(modules) > 30
    assert loaded.stdout.strip() == "[]"
