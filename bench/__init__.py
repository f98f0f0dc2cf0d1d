"""Benchmarks of tokenlat's recording paths (``make bench``); results in docs/benchmarks.md."""
