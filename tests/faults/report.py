"""tests/faults/REPORT.md: what each fault run did and how it ended.

Tests fill a `FaultResult` (the `fault` fixture); the session writes the report at its
end: to tests/faults/REPORT.md under `make faults` (METERLINE_FAULT_REPORT), to the
session's temporary folder otherwise, so partial runs never rewrite the committed one.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path


@dataclass
class FaultResult:
    test: str
    fault: str = ""
    seed: int | None = None
    runs: int = 0  # pipelines run for this test: faulty ones and clean references
    events: int = 0  # records published to the faulty run
    injections: list[str] = field(default_factory=list)
    restarts: int = 0
    recover_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    outcome: str = "not run"
    detail: str = ""

    def recovery(self) -> str:
        if not self.recover_s:
            return "-"
        return (
            f"median {statistics.median(self.recover_s):.1f}s, max {max(self.recover_s):.1f}s"
            f" ({len(self.recover_s)})"
        )


def _commit() -> str:
    if os.environ.get("METERLINE_FAULT_COMMIT"):  # a run from an exported snapshot has no .git
        return os.environ["METERLINE_FAULT_COMMIT"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _compiled() -> bool:
    root = Path(__file__).resolve().parents[2]
    return any(path.parent.name != "build" for path in root.glob("*/*.cpython-*.so"))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_report(results: Sequence[FaultResult], wall_s: float) -> str:
    passed = sum(r.outcome == "passed" for r in results)
    lines = [
        "# Fault-injection report",
        "",
        f"Written by the fault suite (`make faults`) at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on commit "
        f"{_commit()}, {os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}, "
        f"hot path {'compiled (mypyc)' if _compiled() else 'plain Python'}. "
        f"Suite wall time {wall_s / 60:.1f} min; {passed} of {len(results)} fault tests passed.",
        "",
        "Every fault runs the whole pipeline as worker processes on the embedded broker and compares "
        "the final invoice_drafts, invoice_lines and usage_totals with a clean `meterline run "
        "--close-all` of the same input, plus the reconciliation (events in = rated + duplicates + "
        "rejected by reason; rated amounts = usage_totals.amount_exact per account/charge/period). "
        "Rerun one with `METERLINE_FAULT_SEED=<seed>`.",
        "",
        "| fault | test | seed | runs | events | injections | restarts | time to recover | time | outcome |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        injections = f"{len(r.injections)}" if r.injections else "-"
        lines.append(
            "| "
            + " | ".join(
                _cell(v)
                for v in (
                    r.fault, r.test, str(r.seed), str(r.runs), f"{r.events:,}", injections,
                    str(r.restarts), r.recovery(), f"{r.duration_s:.0f}s", r.outcome,
                )
            )
            + " |"
        )  # fmt: skip
    sizes = ", ".join(
        f"{name}={os.environ[name]}"
        for name in ("METERLINE_FAULT_EVENTS", "METERLINE_FAULT_KILL_EVENTS", "METERLINE_FAULT_GARBAGE")
        if name in os.environ
    )
    lines += ["", f"Sizes: {sizes or 'defaults'}.", "", "## Details", ""]
    for r in results:
        lines += [f"### {r.fault} — `{r.test}`: {r.outcome}", ""]
        if r.injections:
            lines.append("Injection points: " + ", ".join(r.injections) + ".")
            lines.append("")
        lines += [f"- {note}" for note in r.notes]
        if r.detail:
            lines += ["", "```", r.detail.strip(), "```"]
        lines.append("")
    return "\n".join(lines)


def write_report(path: Path, results: Sequence[FaultResult], wall_s: float) -> None:
    path.write_text(render_report(results, wall_s))
