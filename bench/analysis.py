"""The engine's graph analysis (webapp.engine.graph.analyze) on generated definitions.

Pure and in-process: no database, no workers. Each round analyses a NEW PipelineDef object
(the engine caches per definition object, so re-analysing the same object would time a
cache hit).
"""
from __future__ import annotations

import random
import statistics
import time

from .progress import say


def definition(n: int, seed: int = 7):
    """A realistic DAG of n steps: 1-3 dependencies among the 30 previous steps, a parallel group
    of 4 members every 100 steps, durations from 10 s to 5 min."""
    from webapp.engine.types import GroupDef, PipelineDef, StepDef

    rng = random.Random(seed)
    steps, groups = [], []
    i = 0
    while i < n:
        sid = i + 1
        if i and i % 100 == 50 and i + 4 <= n:
            gid = f"g{i}"
            groups.append(GroupDef(id=gid, name=f"group {i}", sync_policy="wait_all"))
            for k in range(4):
                steps.append(StepDef(id=sid + k, name=f"step-{sid + k}", order=sid + k, dependencies=(sid - 1,),
                                     parallel_group=gid, estimated_duration=rng.uniform(10, 300)))
            i += 4
            continue
        if i == 0:
            deps: tuple[int, ...] = ()
        else:
            lo = max(1, sid - 30)
            deps = tuple(sorted(set(rng.randint(lo, sid - 1) for _ in range(rng.randint(1, 3)))))
        steps.append(StepDef(id=sid, name=f"step-{sid}", order=sid, dependencies=deps,
                             estimated_duration=rng.uniform(10, 300)))
        i += 1
    return PipelineDef(steps=tuple(steps), groups=tuple(groups))


def time_analyze(n: int, rounds: int) -> float:
    """Median milliseconds of graph.analyze on an n-step definition."""
    from webapp.engine import graph

    samples = []
    for _ in range(rounds):
        defn = definition(n)
        t0 = time.perf_counter()
        out = graph.analyze(defn)
        samples.append((time.perf_counter() - t0) * 1000)
        assert out["valid"] and out["total_steps"] == n, out["problems"][:3]
    return statistics.median(samples)


def run(rounds: int) -> dict:
    time_analyze(200, 1)  # imports and warm caches of the interpreter, not of the definition
    small = time_analyze(1000, rounds)
    say(f"  analysis 1000 steps: {small:.1f} ms (median of {rounds})")
    large = time_analyze(5000, rounds)
    say(f"  analysis 5000 steps: {large:.1f} ms (median of {rounds})")
    return {"steps_1000_ms": round(small, 2), "steps_5000_ms": round(large, 2),
            "growth": round(large / small, 2) if small else None, "rounds": rounds}
