"""Style rules the code keeps: no module of the packages over 400 lines (split one along
a real seam rather than let it grow)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("meterline", "mediation", "rating", "consolidation", "schemas", "generator", "invoice_site")
MAX_LINES = 400


def module_lines() -> dict[str, int]:
    """Lines per .py file of the packages, by path relative to the repository root."""
    return {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def test_every_package_has_modules() -> None:
    found = {name.split("/", 1)[0] for name in module_lines()}
    assert found == set(PACKAGES)


def test_no_module_is_over_400_lines() -> None:
    over = {name: lines for name, lines in module_lines().items() if lines > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them): {over}"
