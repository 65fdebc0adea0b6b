"""Page blueprints (HTML + HTMX partials)."""
from __future__ import annotations

from flask import Flask, render_template
from flask_login import current_user
from flask_wtf.csrf import CSRFError


def register(app: Flask) -> None:
    from . import approvals, auth, dashboard, executions, notifications, pages, pipelines

    for module in (auth, pages, pipelines, executions, approvals, notifications, dashboard):
        app.register_blueprint(module.bp)

    @app.context_processor
    def inject_nav():
        from ..services.approvals import inbox_count
        count = 0
        if current_user.is_authenticated:
            count = inbox_count(current_user)
        return {"nav_pending_approvals": count, "url_map_endpoints": app.view_functions}

    @app.errorhandler(CSRFError)
    def csrf_error(e):
        return auth.csrf_failure(e)

    for code, message in ((403, "You don't have permission to do that."), (404, "Nothing here.")):
        def handler(e, code=code, message=message):
            from flask import jsonify, request
            if request.path.startswith("/api/"):
                return jsonify({"error": message, "fields": {}}), code
            return render_template("error.html", code=code, message=message), code
        app.register_error_handler(code, handler)
