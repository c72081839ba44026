"""Long-running stage workers: wire a stage's transform to the shared runtime.

A fatal error (meterline.runtime.kafka_errors.FatalKafkaError: fenced twice, authorization,
unknown topic, stored offsets past a topic's end; or a Schema Registry that refuses the
schemas or does not answer at startup) ends the worker with exit code 1 after /healthz
and one JSON log line (`worker_fatal`) say why; no traceback.
"""

from __future__ import annotations

import resource
import signal
import threading
from types import FrameType
from typing import NoReturn

import structlog
from confluent_kafka.admin import AdminClient

from consolidation.stage import Consolidator
from consolidation.store import BillingStore
from mediation.stage import MediationProcessor
from meterline.app.chained import STAGE as CHAINED
from meterline.app.chained import ChainedProcessor, ChainError
from meterline.app.publish import create_topics
from meterline.kernel.config import Settings
from meterline.kernel.dlq import max_bytes_of
from meterline.kernel.messages import Processor
from meterline.runtime.health import HEALTH
from meterline.runtime.heap import settle_heap
from meterline.runtime.kafka_config import client_config
from meterline.runtime.kafka_errors import FatalKafkaError
from meterline.runtime.logs import configure_logging, redact_config
from meterline.runtime.metrics import serve_metrics
from meterline.runtime.stage_runner import StageRunner
from meterline.runtime.tables import CompactedTable, ContractsTable, PeriodsTable
from rating.stage import RatingProcessor
from schemas.registry_client import RegistryError, use_registry

STAGES = ("mediation", "rating", "consolidation")
# The same pipeline with mediation and rating in one process (meterline.app.chained).
CHAINED_STAGES = (CHAINED, "consolidation")


def _tables(settings: Settings, stage: str) -> tuple[ContractsTable, PeriodsTable]:
    name = f"{stage}-{settings.instance_id}"
    topics = settings.topics
    servers, kafka = settings.bootstrap_servers, settings.kafka
    contracts = ContractsTable(
        CompactedTable(topics.contracts, servers, kafka, f"c-{name}", prefix=topics.prefix)
    )
    periods = PeriodsTable(CompactedTable(topics.periods, servers, kafka, f"p-{name}", prefix=topics.prefix))
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
        _fatal(stage, exc.reason)
    except RegistryError as exc:
        _fatal(stage, f"schema registry: {exc}")


def _fatal(stage: str, reason: str) -> NoReturn:
    HEALTH.fail(reason)
    structlog.get_logger().error("worker_fatal", stage=stage, reason=reason, exit_code=1)
    raise SystemExit(1) from None


def _run(stage: str, settings: Settings) -> None:
    log = structlog.get_logger()
    log.info("worker_config", kafka=redact_config(dict(settings.kafka)), bootstrap=settings.bootstrap_servers)
    serve_metrics(settings.metrics_port)
    create_topics(settings)
    if settings.schema_registry_url:  # before any record is framed: the registry's ids, or exit
        use_registry(
            settings.schema_registry_url,
            settings.topics.mediated,
            settings.topics.rated,
            user_info=settings.schema_registry_user_info,
            ca_location=settings.schema_registry_ca_location,
            register=settings.schema_registry_auto_register,
        )
    contracts, periods = _tables(settings, stage)
    settle_heap()
    if stage == "consolidation":
        stopping = threading.Event()
        consolidator: Consolidator | None = None

        def stop(signum: int, frame: FrameType | None) -> None:
            stopping.set()
            if consolidator is not None:
                consolidator.request_stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        # Several consolidation workers share one store (DuckLake): each owns its partitions.
        store = BillingStore(settings.out_dir, settings.store_catalog)
        try:
            consolidator = Consolidator(settings, contracts, periods, store)
            if not stopping.is_set():
                consolidator.run()
        finally:
            store.close()
            log_peak_memory(stage)
        return
    runner = _stage_runner(stage, settings, contracts, periods)
    runner.install_signal_handlers()
    try:
        runner.run()
    finally:
        log_peak_memory(stage)


def _stage_runner(
    stage: str, settings: Settings, contracts: ContractsTable, periods: PeriodsTable
) -> StageRunner:
    """The runtime loop of a Kafka stage: mediation, rating, or both chained in one process."""
    topics = settings.topics
    admin = AdminClient(client_config(settings.bootstrap_servers, settings.kafka))

    def partitions(topic: str) -> int:
        return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)

    entry_topics = [topics.name(t.name) for t in settings.raw_topics]

    def mediation() -> MediationProcessor:
        return MediationProcessor(settings, contracts, periods, partitions(topics.repartition))

    def rating(rated_partitions: int | None = None) -> RatingProcessor:
        return RatingProcessor(
            contracts,
            periods,
            max_dlq_bytes=max_bytes_of(settings.kafka),
            rated_topic=topics.rated,
            dlq_topic=topics.rejected,
            rated_partitions=rated_partitions,
        )

    processor: Processor
    if stage == CHAINED:
        try:
            processor = ChainedProcessor(
                mediation(), rating(partitions(topics.rated)), contracts, periods, settings.publish_mediated
            )
        except ChainError as exc:
            _fatal(stage, str(exc))
        inputs = entry_topics
    elif stage == "mediation":
        processor = mediation()
        inputs = list(entry_topics)
        if any(not t.keyed_by_account for t in settings.raw_topics):
            inputs.append(topics.repartition)
    else:
        processor, inputs, entry_topics = rating(), [topics.mediated], []
    return StageRunner(processor, settings, inputs, after_restore=settle_heap, entry_topics=entry_topics)


def log_peak_memory(stage: str) -> None:
    """The worker's peak resident memory, logged at exit (benchmarks read it from the log)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)  # ru_maxrss is in KiB on Linux
    structlog.get_logger().info(
        "worker_stopped",
        stage=stage,
        peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
        cpu_seconds=round(usage.ru_utime + usage.ru_stime, 2),
    )
