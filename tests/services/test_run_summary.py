"""What summaries say (services.run_summary): bypasses, steps that never ran, groups skipped
because of an upstream failure, and the end-of-run reason that names them."""
from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace as A

from webapp.services import run_summary as rs

T = datetime(2026, 1, 1)


def test_status_text_names_bypasses():
    assert rs.status_text("success", 1) == "success · 1 bypassed"
    assert rs.status_text("success") == "success" and rs.status_text("waiting_approval") == "waiting approval"


def test_a_step_cancelled_before_it_started_did_not_run():
    never = [A(status="cancelled", started_at=None)]
    stopped = [A(status="cancelled", started_at=T)]
    retry_cancelled = [A(status="failed", started_at=T), A(status="cancelled", started_at=None)]
    assert rs.never_ran(never) and rs.step_status("cancelled", never) == "not_run"
    assert not rs.never_ran(stopped) and rs.step_status("cancelled", stopped) == "cancelled"
    assert not rs.never_ran(retry_cancelled)  # it ran (and failed) before: it can be retried
    assert rs.step_status("failed", [A(status="failed", started_at=None)]) == "failed"


def test_group_verdict_only_for_members_skipped_because_of_an_upstream_failure():
    skipped = [A(step_name="c1", status="skipped", upstream_failed=True),
               A(step_name="c2", status="skipped", upstream_failed=True)]
    status, reason = rs.group_verdict("failed", skipped)
    assert status == "skipped" and reason.startswith("skipped (upstream failed): c1, c2")
    # a member that ran and failed: the group failed
    assert rs.group_verdict("failed", skipped[:1] + [A(step_name="c2", status="failed", upstream_failed=False)]) is None
    assert rs.group_verdict("failed", [A(step_name="c1", status="timed_out", upstream_failed=False)]) is None
    assert rs.group_verdict("success", skipped) is None  # only a failure is reworded
    # skipped by its own condition, not an upstream failure: nothing to reword
    assert rs.group_verdict("failed", [A(step_name="c1", status="skipped", upstream_failed=False)]) is None


def test_truthful_reason_moves_skipped_groups_out_of_the_failed_ones():
    engine = "failed steps: unit tests; failed groups: canary (failed), smoke (failed: s1, s2)"
    assert rs.truthful_reason(engine, ["canary"]) == \
        "failed steps: unit tests; failed groups: smoke (failed: s1, s2); skipped (upstream failed): canary"
    assert rs.truthful_reason("failed steps: a; failed groups: canary (failed)", ["canary"]) == \
        "failed steps: a; skipped (upstream failed): canary"
    # a group that really failed keeps its words, and so does a reason without groups
    assert rs.truthful_reason(engine, ["smoke"]) == engine
    assert rs.truthful_reason("failed steps: a", ["canary"]) == "failed steps: a"
