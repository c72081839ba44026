"""Benchmarks: each writes its figures and the command that produced them to bench/RESULTS.md."""
