"""Long-running stage workers: wire a stage's transform to the shared runtime.

A fatal error (meterline.kafka_errors.FatalKafkaError: fenced twice, authorization,
unknown topic, stored offsets past a topic's end) ends the worker with exit code 1
after /healthz and one JSON log line (`worker_fatal`) say why; no traceback.
"""

from __future__ import annotations

import resource
import signal
from types import FrameType

import structlog
from confluent_kafka.admin import AdminClient

from consolidation.stage import Consolidator
from consolidation.store import BillingStore
from mediation.stage import MediationProcessor
from meterline.config import Settings
from meterline.health import HEALTH
from meterline.heap import settle_heap
from meterline.kafka_config import client_config
from meterline.kafka_errors import FatalKafkaError
from meterline.logs import configure_logging, redact_config
from meterline.metrics import serve_metrics
from meterline.publish import create_topics
from meterline.runtime import StageRunner
from meterline.tables import CompactedTable, ContractsTable, PeriodsTable
from meterline.topics import CONTRACTS, MEDIATED, PERIODS, REPARTITION
from rating.stage import RatingProcessor

STAGES = ("mediation", "rating", "consolidation")


def _tables(settings: Settings, stage: str) -> tuple[ContractsTable, PeriodsTable]:
    name = f"{stage}-{settings.instance_id}"
    contracts = ContractsTable(
        CompactedTable(CONTRACTS, settings.bootstrap_servers, settings.kafka, f"c-{name}")
    )
    periods = PeriodsTable(CompactedTable(PERIODS, settings.bootstrap_servers, settings.kafka, f"p-{name}"))
    contracts.load()
    periods.load()
    return contracts, periods


def run_worker(stage: str, settings: Settings) -> None:
    """Run a stage until stopped; SystemExit(1) after a fatal error."""
    configure_logging(settings.log_level, stage)
    HEALTH.configure(settings.health_stall_s, settings.broker_timeout_s)
    try:
        _run(stage, settings)
    except FatalKafkaError as exc:
        HEALTH.fail(exc.reason)
        structlog.get_logger().error("worker_fatal", stage=stage, reason=exc.reason, exit_code=1)
        raise SystemExit(1) from None


def _run(stage: str, settings: Settings) -> None:
    log = structlog.get_logger()
    log.info("worker_config", kafka=redact_config(dict(settings.kafka)), bootstrap=settings.bootstrap_servers)
    serve_metrics(settings.metrics_port)
    create_topics(settings)
    contracts, periods = _tables(settings, stage)
    settle_heap()
    if stage == "consolidation":
        store = BillingStore(settings.out_dir)
        consolidator = Consolidator(settings, contracts, periods, store)

        def stop(signum: int, frame: FrameType | None) -> None:
            consolidator.request_stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            consolidator.run()
        finally:
            store.close()
            log_peak_memory(stage)
        return
    if stage == "mediation":
        admin = AdminClient(client_config(settings.bootstrap_servers, settings.kafka))
        partitions = len(admin.list_topics(REPARTITION, timeout=10).topics[REPARTITION].partitions)
        processor: MediationProcessor | RatingProcessor = MediationProcessor(
            settings, contracts, periods, partitions
        )
        inputs = [t.name for t in settings.raw_topics]
        if any(not t.keyed_by_account for t in settings.raw_topics):
            inputs.append(REPARTITION)
        runner = StageRunner(
            processor,
            settings,
            inputs,
            after_restore=settle_heap,
            entry_topics=[t.name for t in settings.raw_topics],
        )
    else:
        runner = StageRunner(
            RatingProcessor(contracts, periods), settings, [MEDIATED], after_restore=settle_heap
        )
    runner.install_signal_handlers()
    try:
        runner.run()
    finally:
        log_peak_memory(stage)


def log_peak_memory(stage: str) -> None:
    """The worker's peak resident memory, logged at exit (benchmarks read it from the log)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)  # ru_maxrss is in KiB on Linux
    structlog.get_logger().info(
        "worker_stopped",
        stage=stage,
        peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
        cpu_seconds=round(usage.ru_utime + usage.ru_stime, 2),
    )
