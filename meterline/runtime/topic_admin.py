"""Creating topics. Topics are created with explicit configs (meterline.kernel.topics) because
Tansu's DescribeConfigs only returns what was set at creation (docs/operations.md).
"""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic


def ensure_topics(
    admin: AdminClient, wanted: dict[str, tuple[int, dict[str, str]]], replication_factor: int = 1
) -> None:
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [
        NewTopic(n, p, replication_factor, config=c) for n, (p, c) in wanted.items() if n not in existing
    ]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as exc:
            # Another process may have created it between our listing and our request.
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc).lower():
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc
