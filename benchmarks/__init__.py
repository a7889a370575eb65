"""The queuectl benchmark suite (issue 7): run ``python -m benchmarks`` (see BENCHMARKS.md)."""
