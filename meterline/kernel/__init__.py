"""The kernel: what every part of meterline shares, with no Kafka client in it.

The catalog and its file format, usage records, rejection reasons, the header names
and the dead-letter record, the values a stage consumes and produces (`messages`:
InputRecord, OutputRecord, BatchResult, the Processor protocol), the views of the
control topics a stage reads (`views`), settings and topic names, and the commit
protocol (`checkpoint`). Stage packages (mediation, rating) build on this alone; a
test (tests/test_layers.py) fails if a kernel module imports confluent_kafka, the
runtime, the app or a stage package.
"""
