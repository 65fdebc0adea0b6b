"""`python -m bench [--quick]`: run the benchmarks, print a table, write bench/results/latest.json."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import analysis, report
from .progress import say
from .stack import ROOT, Database, Stack
from .suite import Sizes, Suite

FIGURES = ("chain100", "fan50", "throughput", "submit", "analysis", "memory", "database")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller runs (same keys), under a minute")
    p.add_argument("--rounds", type=int, default=None, help="rounds per comparison (default 3; the median is kept)")
    p.add_argument("--workers", type=int, default=2, help="worker processes per side (default 2)")
    p.add_argument("--fork", action="store_true", help="forking RQ workers (Worker) on both sides instead of SimpleWorker")
    p.add_argument("--sizes", default="", help="override sizes, e.g. chain=100,fan=50,throughput=200,submit=500,memory_steps=1000")
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(FIGURES)}")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"), help="where to write the JSON")
    return p.parse_args(argv)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(args, redis_conn, sizes: Sizes) -> dict:
    import sqlite3

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "worker_class": "Worker (forking)" if args.fork else "SimpleWorker (non-forking)",
        "workers": args.workers,
        "database": "sqlite" + (" + postgresql" if os.environ.get("BENCH_DATABASE_URL") else ""),
        "sqlite": sqlite3.sqlite_version,
        "redis_server": redis_conn.info("server").get("redis_version"),
        "versions": {d: _version(d) for d in ("rq", "redis", "SQLAlchemy", "Flask", "psycopg", "networkx")},
        "rounds": sizes.rounds,
        "sizes": {k: getattr(sizes, k) for k in ("chain", "fan", "throughput", "submit", "memory_steps")},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()} or set(FIGURES)
    unknown = only - set(FIGURES)
    if unknown:
        print(f"unknown figure(s): {', '.join(sorted(unknown))}; choose from {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    sizes = Sizes.for_mode(args.quick, args.rounds)
    if args.sizes:
        try:
            overrides = {k.strip(): int(v) for k, v in (item.split("=") for item in args.sizes.split(","))}
            sizes = replace(sizes, **overrides)
        except (ValueError, TypeError) as exc:
            print(f"bad --sizes {args.sizes!r}: {exc}", file=sys.stderr)
            return 2
    t_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="ansflow-bench-"))
    from webapp.embedded_redis import EmbeddedRedis

    redis_server = EmbeddedRedis(workdir=workdir / "redis").start()
    say(f"AnsFlow bench ({'quick' if args.quick else 'full'}): Redis on {redis_server.url}, work dir {workdir}")
    results: dict = {}
    stacks: list[Stack] = []
    try:
        from redis import Redis

        results["environment"] = environment(args, Redis.from_url(redis_server.url), sizes)
        if "analysis" in only:
            say("graph analysis (in process)")
            results["analysis"] = analysis.run(sizes.analysis_rounds)
        needs_workers = only & {"chain100", "fan50", "throughput", "submit", "memory", "database"}
        if needs_workers:
            say("SQLite stack")
            stack = Stack(workdir / "sqlite", redis_server.url, Database(workdir / "sqlite"), args.workers, args.fork)
            (workdir / "sqlite").mkdir()
            stacks.append(stack)
            stack.start()
            suite = Suite(stack, sizes)
            suite.warm_up()
            for name in ("chain100", "fan50", "throughput", "submit", "memory"):
                if name in only or (name == "chain100" and "database" in only):
                    say(name)
                    results[name] = getattr(suite, name)()
            stack.stop()
            stacks.remove(stack)
            if "chain100" in results:
                c = results["chain100"]
                results["database"] = {"sqlite": {"chain100_ratio": c["ratio"],
                                                  "overhead_ms_per_step": c["overhead_ms_per_step"]},
                                       "postgresql": None}
            pg = os.environ.get("BENCH_DATABASE_URL")
            if pg and ("database" in only or "chain100" in only):
                say("PostgreSQL stack (BENCH_DATABASE_URL)")
                (workdir / "pg").mkdir()
                stack = Stack(workdir / "pg", redis_server.url, Database(workdir / "pg", pg), args.workers, args.fork)
                stacks.append(stack)
                stack.start()
                results["environment"]["postgresql"] = _pg_version(stack)
                suite = Suite(stack, sizes)
                suite.warm_up()
                say("chain100 on PostgreSQL")
                c = suite.chain100()
                pg_figures = {"chain100_ratio": c["ratio"], "overhead_ms_per_step": c["overhead_ms_per_step"],
                              "ansflow_s": c["ansflow_s"], "raw_rq_s": c["raw_rq_s"], "chain100": c}
                # the other orchestration figures too, when they were asked for: the targets hold on both
                for name in ("fan50", "throughput", "submit"):
                    if name in only:
                        say(f"{name} on PostgreSQL")
                        pg_figures[name] = getattr(suite, name)()
                        pg_figures[f"{name}_ratio"] = pg_figures[name]["ratio"]
                results["database"]["postgresql"] = pg_figures
                stack.stop()
                stacks.remove(stack)
        results["targets"] = report.check_targets(results)
        results["environment"]["duration_s"] = round(time.monotonic() - t_start, 1)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(report.table(results))
        print(f"\nwritten {out} in {results['environment']['duration_s']} s")
        return 0
    finally:
        for stack in stacks:
            try:
                stack.stop()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                say(f"cleanup: {exc}")
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _pg_version(stack: Stack) -> str | None:
    from sqlalchemy import text

    from webapp.extensions import db

    with db.engine.connect() as conn:
        return conn.execute(text("SHOW server_version")).scalar()


if __name__ == "__main__":
    sys.exit(main())
