from __future__ import annotations

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from meterline.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def test_broker_answers_metadata_and_stops(fresh_broker: EmbeddedBroker) -> None:
    admin = AdminClient({"bootstrap.servers": fresh_broker.bootstrap_servers})
    metadata = admin.list_topics(timeout=5)
    assert metadata.brokers, "the embedded broker lists itself"
    fresh_broker.stop()
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": fresh_broker.bootstrap_servers}).list_topics(timeout=1)
