"""The app: the `meterline` CLI, `run`/`demo` orchestration and the worker wiring.

The only part of meterline that knows every stage: it builds the processors
(mediation, rating, or both chained in one process) and hands them to the runtime.
"""
