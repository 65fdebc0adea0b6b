"""Imports point one way (DESIGN §1): the engine is pure; web, api and tasks never import each other."""
import ast
from pathlib import Path

import pytest

WEBAPP = Path(__file__).resolve().parent.parent / "webapp"
FORBIDDEN_IN_ENGINE = ("flask", "flask_sqlalchemy", "flask_login", "sqlalchemy", "rq", "redis", "webapp.models",
                       "webapp.services", "webapp.extensions")


def imported_modules(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")  # "a.b.mod" or "a.b.__init__": same rule
                base = base[: len(base) - node.level]
                mod = ".".join(base + ([node.module] if node.module else []))
                found.add(mod)
                if not node.module:
                    found.update(f"{mod}.{a.name}" for a in node.names)
            else:
                found.add(node.module or "")
    return found


def package_of(path: Path) -> str:
    rel = path.relative_to(WEBAPP.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts) + ".__init__"
    return ".".join(parts)


def modules_in(sub: str):
    return sorted((WEBAPP / sub).rglob("*.py"))


@pytest.mark.parametrize("path", modules_in("engine"), ids=lambda p: p.name)
def test_engine_is_pure(path):
    mods = imported_modules(path, package_of(path))
    bad = sorted(m for m in mods if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_IN_ENGINE))
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("layer,others", [("web", ("api", "tasks")), ("api", ("web", "tasks")), ("tasks", ("web", "api"))])
def test_delivery_layers_do_not_import_each_other(layer, others):
    for path in modules_in(layer):
        mods = imported_modules(path, package_of(path))
        bad = sorted(m for m in mods for o in others if m == f"webapp.{o}" or m.startswith(f"webapp.{o}."))
        assert not bad, f"{path} imports {bad}"


def test_services_do_not_import_delivery_layers():
    for path in modules_in("services"):
        mods = imported_modules(path, package_of(path))
        bad = sorted(m for m in mods for o in ("web", "api", "tasks") if m.startswith(f"webapp.{o}"))
        assert not bad, f"{path} imports {bad}"


def test_the_checker_sees_violations(tmp_path):
    """Guard against a checker that passes everything."""
    fake = WEBAPP / "engine" / "graph.py"
    mods = imported_modules(fake, "webapp.engine.graph")
    assert mods, "the import parser found nothing in graph.py"
    probe = tmp_path / "probe.py"
    probe.write_text("from flask import Flask\nfrom ..models import User\n")
    found = imported_modules(probe, "webapp.engine.probe")
    assert "flask" in found and "webapp.models" in found
