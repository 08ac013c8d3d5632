"""The benchmark harness: the gateway measured against the fake upstream hit directly (see docs/benchmarks.md)."""
