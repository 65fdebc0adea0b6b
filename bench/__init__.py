"""AnsFlow benchmarks: orchestration overhead against raw RQ, analysis speed, worker memory.

`python -m bench [--quick]` (or `make bench` / `make bench-quick`) starts its own Redis,
database and worker processes, runs every comparison interleaved with raw RQ, prints a
table and writes bench/results/latest.json. See bench/README.md for how to read it.
"""
