"""A real Chromium builds a pipeline in the editor: create, two steps with a dependency, an
inline condition test (HTMX), the graph."""
import re

import pytest

from webapp.extensions import db
from webapp.models import Pipeline

from ..conftest import browser_login

pytestmark = pytest.mark.e2e


def test_build_a_pipeline_in_the_editor(page, live_server, users):
    browser_login(page, "maintainer1")
    page.get_by_role("link", name="New pipeline").first.click()
    page.fill("#f-name", "browser made")
    page.fill("#f-description", "built by the e2e test")
    page.get_by_role("button", name="Create pipeline").click()
    page.wait_for_url(re.compile(r".*/pipelines/\d+/$"))
    assert "No steps yet — add the first step" in page.locator("#steps-panel").inner_text()

    # first step: a shell command
    page.get_by_role("link", name="Add the first step").click()
    page.fill("#f-name", "build")
    page.fill("#f-command", "make build")
    assert page.locator("#f-url").is_hidden()  # only the selected type's parameters show
    page.get_by_role("button", name="Add step").click()
    page.wait_for_url(re.compile(r".*/pipelines/\d+/(#step-\d+)?$"))
    assert "Step 'build' added." in page.locator(".flashes").inner_text()

    # second step: an http check that depends on build, with an expression condition
    page.get_by_role("link", name="Add step").click()
    page.fill("#f-name", "smoke")
    page.select_option("#f-type", "http")
    assert page.locator("#f-command").is_hidden() and page.locator("#f-url").is_visible()
    page.fill("#f-url", "https://example.com/health")
    page.get_by_label("build", exact=True).check()  # ticking a dependency picks "these steps"
    assert page.locator('input[name=deps_mode][value=explicit]').is_checked()
    page.locator("summary", has_text="Condition").click()
    # the rule stays "dependencies succeeded"; the expression is asked for beside it, not instead of it
    assert page.locator("#f-cond_type").input_value() == "on_success"
    assert page.locator("#f-cond_type option[value=expression]").count() == 0
    assert page.get_by_label("and this expression is true (optional)").is_visible()
    page.fill("#f-cond_expression", 'variables.env == "prod" && steps.build.status == "success"')
    page.locator("summary", has_text="Sample context").click()
    page.fill("#f-cond_context", '{"variables": {"env": "prod"}}')
    url_before = page.url
    page.get_by_role("button", name="Test condition").click()
    result = page.locator("#condition-result")
    result.get_by_text("would run").wait_for()
    assert "variables.env was 'prod'" in result.inner_text()
    assert page.url == url_before and page.locator("#f-name").input_value() == "smoke"  # swapped in place

    page.fill("#f-cond_context", '{"variables": {"env": "dev"}}')
    page.get_by_role("button", name="Test condition").click()
    result.get_by_text("would be skipped").wait_for()
    page.get_by_role("button", name="Add step").click()
    page.wait_for_url(re.compile(r".*/pipelines/\d+/(#step-\d+)?$"))

    rows = page.locator(".steps-table tbody tr")
    assert rows.count() == 2
    assert "build" in rows.nth(1).locator("td").nth(2).inner_text()

    # the graph: two nodes, an explicit edge build -> smoke on the critical path
    page.get_by_role("link", name="Graph", exact=True).click()
    page.wait_for_url(re.compile(r".*/graph$"))
    svg = page.locator("svg.dag")
    svg.wait_for()
    assert svg.locator(".dag-node").count() == 2
    edge = svg.locator('path.dag-edge[data-from="build"][data-to="smoke"]')
    assert edge.count() == 1 and "critical" in edge.get_attribute("class") and edge.get_attribute("stroke-dasharray") is None
    assert page.locator("#critical-total").inner_text() == "2m"

    p = db.session.execute(db.select(Pipeline).filter_by(name="browser made")).scalar_one()
    db.session.refresh(p)
    smoke = next(s for s in p.steps if s.name == "smoke")
    assert [d.name for d in smoke.depends_on] == ["build"] and smoke.parameters["url"] == "https://example.com/health"
    assert smoke.conditions == {"type": "on_success",
                                "expression": 'variables.env == "prod" && steps.build.status == "success"'}
    assert p.version == 3
