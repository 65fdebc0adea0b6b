"""AnsFlow application factory."""
from __future__ import annotations

from typing import Any

from flask import Flask

from .app_class import AnsFlowFlask
from .config import ROOT, Config


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = AnsFlowFlask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
        instance_path=str(ROOT / "instance"),
    )
    app.config.from_object(Config())
    if config:
        app.config.update(config)

    from . import database
    from .extensions import csrf, db, login_manager, migrate

    db.init_app(app)
    database.configure(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"))
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.session_protection = "strong"

    from . import security
    security.init_app(app)

    from .web import register as register_web
    register_web(app)
    from .api import bp as api_bp
    csrf.exempt(api_bp)  # the JSON API authenticates with bearer tokens, not cookies
    app.register_blueprint(api_bp)

    from . import cli
    cli.register(app)
    return app
