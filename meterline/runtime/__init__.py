"""The Kafka runtime: runs plain stage transforms exactly once against a Kafka cluster.

The consume-transform-produce loop (`stage_runner`) and its Kafka checkpoint, the
changelog state restore and rebalance handling, the control-topic tables (which
implement the kernel's views), health and metrics, logging, client settings and the
embedded broker. It never imports a stage package: workers hand it a Processor.
"""
