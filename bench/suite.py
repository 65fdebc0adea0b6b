"""The comparisons: each round runs AnsFlow and raw RQ back to back (alternating which goes
first), on the same Redis server, with the same worker class and count; figures are medians."""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass

from . import sides
from .progress import say
from .stack import Stack, rss_mb


@dataclass(frozen=True)
class Sizes:
    rounds: int
    chain: int
    fan: int
    throughput: int
    submit: int
    memory_steps: int
    analysis_rounds: int
    quick: bool = False

    @classmethod
    def for_mode(cls, quick: bool, rounds: int | None = None) -> "Sizes":
        if quick:
            return cls(rounds=rounds or 3, chain=20, fan=10, throughput=40, submit=200, memory_steps=200,
                       analysis_rounds=3, quick=True)
        return cls(rounds=rounds or 3, chain=100, fan=50, throughput=1000, submit=500, memory_steps=5000,
                   analysis_rounds=5, quick=False)


def _med(values) -> float:
    return statistics.median(values)


def _r(x: float, n: int = 3) -> float:
    return round(x, n)


def _interleaved(label: str, rounds: int, ansflow, raw) -> tuple[list, list]:
    """Call ansflow() and raw() once per round, alternating which goes first."""
    a_runs, r_runs = [], []
    for i in range(rounds):
        order = [("ansflow", ansflow, a_runs), ("raw RQ", raw, r_runs)]
        if i % 2:
            order.reverse()
        parts = []
        for name, fn, into in order:
            run = fn()
            into.append(run)
            parts.append(f"{name} {run.span_s:.3f} s")
        say(f"  {label} round {i + 1}/{rounds}: " + " | ".join(parts))
    return a_runs, r_runs


class Suite:
    def __init__(self, stack: Stack, sizes: Sizes):
        self.stack = stack
        self.sizes = sizes
        self.pipelines: dict[str, int] = {}

    def pipeline(self, key: str, graph: sides.Graph) -> int:
        if key not in self.pipelines:
            self.pipelines[key] = sides.define_pipeline(f"bench {key}", graph)
        return self.pipelines[key]

    def warm_up(self) -> None:
        """Each worker imports its modules on its first job: not part of any figure."""
        n = 4 * self.stack.n_workers
        pid = self.pipeline("warm-up", sides.flat(n))
        for _ in range(1 if self.sizes.quick else 2):
            sides.ansflow_run(self.stack, pid)
            sides.raw_run_flat(self.stack, n)
        say("  warm-up done")

    # ------------------------------------------------------------------ figures
    def chain100(self) -> dict:
        n = self.sizes.chain
        graph = sides.chain(n)
        pid = self.pipeline(f"chain{n}", graph)
        a, r = _interleaved(f"chain of {n}", self.sizes.rounds,
                            lambda: sides.ansflow_run(self.stack, pid), lambda: sides.raw_run(self.stack, graph))
        a_s, r_s = _med([x.span_s for x in a]), _med([x.span_s for x in r])
        return {"ansflow_s": _r(a_s), "raw_rq_s": _r(r_s), "ratio": _r(a_s / r_s, 2),
                "overhead_ms_per_step": _r((a_s - r_s) / n * 1000, 2),
                "ansflow_ms_per_step": _r(a_s / n * 1000, 2), "raw_rq_ms_per_step": _r(r_s / n * 1000, 2),
                "steps": n, "rounds": self.sizes.rounds}

    def fan50(self) -> dict:
        w = self.sizes.fan
        graph = sides.fan(w)
        pid = self.pipeline(f"fan{w}", graph)
        a, r = _interleaved(f"fan 1->{w}->1", self.sizes.rounds,
                            lambda: sides.ansflow_run(self.stack, pid), lambda: sides.raw_run(self.stack, graph))

        def release_ms(run: sides.Run) -> float:
            mids = [s for name, s in run.steps.items() if name.startswith("m")]
            last_in_queue = max(s.enqueued for s in mids if s.enqueued is not None)
            return (last_in_queue - run.steps["root"].end) * 1000

        def join_ms(run: sides.Run) -> float:
            mids = [s for name, s in run.steps.items() if name.startswith("m")]
            return (run.steps["join"].start - max(s.end for s in mids)) * 1000

        a_s, r_s = _med([x.span_s for x in a]), _med([x.span_s for x in r])
        return {"ansflow_s": _r(a_s), "raw_rq_s": _r(r_s), "ratio": _r(a_s / r_s, 2),
                "release_ms": _r(_med([release_ms(x) for x in a]), 1),
                "join_ms": _r(_med([join_ms(x) for x in a]), 1),
                "raw_rq_release_ms": _r(_med([release_ms(x) for x in r]), 1),
                "raw_rq_join_ms": _r(_med([join_ms(x) for x in r]), 1),
                "width": w, "workers": self.stack.n_workers, "rounds": self.sizes.rounds}

    def throughput(self) -> dict:
        n = self.sizes.throughput
        pid = self.pipeline(f"flat{n}", sides.flat(n))
        a, r = _interleaved(f"{n} independent steps", self.sizes.rounds,
                            lambda: sides.ansflow_run(self.stack, pid), lambda: sides.raw_run_flat(self.stack, n))
        a_rate, r_rate = _med([n / x.span_s for x in a]), _med([n / x.span_s for x in r])
        return {"ansflow_steps_s": _r(a_rate, 1), "raw_rq_jobs_s": _r(r_rate, 1), "ratio": _r(a_rate / r_rate, 2),
                "steps": n, "workers": self.stack.n_workers, "rounds": self.sizes.rounds}

    def submit(self) -> dict:
        """Starting an n-step execution (n independent steps: n rows, n jobs) on queues no worker
        reads, against raw RQ's enqueue_many of n jobs (and a plain enqueue loop, for context)."""
        from rq import Queue

        from webapp.extensions import db
        from webapp.models import Pipeline
        from webapp.services import executions as svc

        n = self.sizes.submit
        pid = self.pipeline(f"flat{n}", sides.flat(n))
        app = self.stack.app
        hold_prefix = f"{self.stack.prefix}-hold"
        a_ms, r_ms, loop_ms = [], [], []
        # round 0 is a warm-up on both sides, not counted: the first start of a pipeline parses
        # and caches its definition, as the other figures' warm-up runs do for the workers
        for i in range(-1, self.sizes.rounds):
            # AnsFlow: svc.start on a queue prefix that no worker listens to
            db.session.remove()
            pipeline = db.session.get(Pipeline, pid)
            app.config["QUEUE_PREFIX"] = hold_prefix
            try:
                gc.collect()
                t0 = time.perf_counter()
                execution = svc.start(pipeline)
                a_ms.append((time.perf_counter() - t0) * 1000)
                pk = execution.id
            finally:
                app.config["QUEUE_PREFIX"] = self.stack.prefix
            db.session.remove()
            sides.neutralise(pk)
            self.stack.raw_queue(f"{hold_prefix}-steps").delete(delete_jobs=True)
            # raw RQ: one enqueue_many pipeline, then a loop of enqueue calls
            q = self.stack.raw_queue(f"{self.stack.prefix}-rawhold")
            gc.collect()
            t0 = time.perf_counter()
            q.enqueue_many([Queue.prepare_data("bench.rawjobs.run_true", result_ttl=60) for _ in range(n)])
            r_ms.append((time.perf_counter() - t0) * 1000)
            q.delete(delete_jobs=True)
            gc.collect()
            t0 = time.perf_counter()
            for _ in range(n):
                q.enqueue("bench.rawjobs.run_true", result_ttl=60)
            loop_ms.append((time.perf_counter() - t0) * 1000)
            q.delete(delete_jobs=True)
            label = "warm-up" if i < 0 else f"round {i + 1}/{self.sizes.rounds}"
            say(f"  submit {n} steps {label}: ansflow {a_ms[-1]:.0f} ms | "
                f"raw RQ enqueue_many {r_ms[-1]:.0f} ms | raw RQ enqueue loop {loop_ms[-1]:.0f} ms")
            if i < 0:
                a_ms, r_ms, loop_ms = [], [], []
        a, r = _med(a_ms), _med(r_ms)
        return {"ansflow_ms": _r(a, 1), "raw_rq_ms": _r(r, 1), "ratio": _r(a / r, 2),
                "raw_rq_enqueue_loop_ms": _r(_med(loop_ms), 1), "steps": n, "rounds": self.sizes.rounds}

    def memory(self) -> dict:
        """RSS of the AnsFlow workers after a warm-up, and after running memory_steps more steps
        (executions of 100 independent steps, one after another). The full run starts fresh
        workers first; the quick run measures the workers that ran the other figures."""
        if not self.sizes.quick:
            self.stack.restart_ansflow_workers()
        pid = self.pipeline("flat100", sides.flat(100))
        warm = self.pipeline("memory warm-up", sides.flat(20))
        sides.ansflow_run(self.stack, warm)
        start = [rss_mb(p.pid) for p in self.stack.ansflow_procs]
        done = 0
        target = self.sizes.memory_steps
        runs = max(1, target // 100)
        for i in range(runs):
            sides.ansflow_run(self.stack, pid)
            done += 100
            if (i + 1) % max(1, runs // 5) == 0 or i + 1 == runs:
                now = [rss_mb(p.pid) for p in self.stack.ansflow_procs]
                say(f"  memory: {done}/{target} steps, worker RSS " + ", ".join(f"{x:.1f}" for x in now) + " MB")
        after = [rss_mb(p.pid) for p in self.stack.ansflow_procs]
        return {"worker_rss_start_mb": _r(max(start), 1), "worker_rss_after_5000_steps_mb": _r(max(after), 1),
                "growth_mb": _r(max(b - a for a, b in zip(start, after)), 1),
                "per_worker_start_mb": [_r(x, 1) for x in start], "per_worker_after_mb": [_r(x, 1) for x in after],
                "steps": done, "workers": self.stack.n_workers}
