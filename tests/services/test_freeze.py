"""services.pipelines.freeze: what an execution freezes, kept per pipeline version."""
from sqlalchemy import event

from webapp.extensions import db
from webapp.services import pipelines as svc


def _shell(name, command):
    return {"name": name, "type": "shell", "parameters": {"command": command}}


def test_a_version_freezes_once_and_each_caller_gets_its_own_copy(app):
    p = svc.save_definition({"name": "p", "steps": [_shell("a", "make")]})
    db.session.commit()
    first = svc.freeze(p)
    reads = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: reads.append(args[2]))
    second = svc.freeze(p)
    assert not [sql for sql in reads if "pipeline_steps" in sql]  # no step rows read again
    assert second == first and second is not first
    second["steps"][0]["parameters"]["command"] = "changed by a caller"
    assert svc.freeze(p)["steps"][0]["parameters"]["command"] == "make"


def test_every_edit_freezes_anew(app):
    p = svc.save_definition({"name": "p", "steps": [_shell("a", "make")]})
    db.session.commit()
    assert svc.freeze(p)["steps"][0]["parameters"]["command"] == "make"
    step = svc.step_by_id(p, svc.freeze(p)["steps"][0]["id"])
    svc.save_step(p, {"parameters": {"command": "make all"}}, step_id=step.id)
    db.session.commit()
    assert svc.freeze(p)["steps"][0]["parameters"]["command"] == "make all"
    svc.update_settings(p, {"name": "renamed"})
    db.session.commit()
    assert svc.freeze(p)["name"] == "renamed"


def test_a_new_pipeline_never_gets_a_deleted_ones_definition(app):
    old = svc.save_definition({"name": "old", "steps": [_shell("a", "old command")]})
    db.session.commit()
    assert svc.freeze(old)["steps"][0]["name"] == "a"
    svc.delete_pipeline(old)
    db.session.commit()
    new = svc.save_definition({"name": "new", "steps": [_shell("b", "new command")]})
    db.session.commit()
    frozen = svc.freeze(new)
    assert frozen["name"] == "new" and [s["name"] for s in frozen["steps"]] == ["b"]
