"""The import structure the architecture promises (docs/architecture.md), checked on the source."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("grok2api", "gateway", "pools", "calllogs", "media_cache")
# Imports inside functions that are not there to dodge a cycle (each says why where it stands).
DELIBERATE = {
    ("gateway/management/commands/demo.py", "gateway.fakegrok"),  # the fake only when the demo runs
    ("pools/apps.py", "pools"),  # a receiver connected once the models exist
    ("gateway/apps.py", "grok2api"),  # system checks registered once the apps exist
}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, inside a function) for every import of a project module in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [f"{child.module}.{alias.name}" for alias in child.names]
                found.extend((name, inner) for name in names if name.split(".")[0] in PROJECT)
            elif isinstance(child, ast.Import):
                found.extend((alias.name, inner) for alias in child.names if alias.name.split(".")[0] in PROJECT)
            visit(child, inner)

    visit(tree, False)
    return found


def _sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts)


def test_the_grok_package_imports_nothing_else_of_the_project() -> None:
    for path in _sources("gateway/grok"):
        for module, _ in _imports(path):
            assert module.startswith("gateway.grok"), f"{path.relative_to(ROOT)} imports {module}"


def test_pools_imports_only_the_grok_package_from_gateway() -> None:
    for path in _sources("pools"):
        for module, _ in _imports(path):
            if module.startswith("gateway"):
                assert module.startswith("gateway.grok"), f"{path.relative_to(ROOT)} imports {module}"


@pytest.mark.parametrize("package", ["gateway", "pools", "grok2api", "calllogs", "media_cache"])
def test_no_project_import_hides_inside_a_function(package: str) -> None:
    for path in _sources(package):
        where = str(path.relative_to(ROOT))
        for module, nested in _imports(path):
            if nested:
                assert any(where == file and module.startswith(prefix) for file, prefix in DELIBERATE), (
                    f"{where} imports {module} inside a function"
                )


def test_the_api_never_reaches_up_into_the_site_package() -> None:
    for path in _sources("gateway"):
        for module, nested in _imports(path):
            if not nested:
                assert not module.startswith("grok2api"), f"{path.relative_to(ROOT)} imports {module}"


def test_the_sqlite_default_never_loads_the_postgresql_driver(tmp_path: Path) -> None:
    # psycopg costs a worker ~9 MB; only a PostgreSQL deployment needs it.
    code = (
        "import os, sys; os.environ['DJANGO_SETTINGS_MODULE'] = 'grok2api.settings'; import grok2api.asgi; "
        "from pools.jobs import load_jobs; load_jobs(); import pools.admin; print('psycopg' in sys.modules)"
    )
    env = {**os.environ, "DATA_DIR": str(tmp_path), "DATABASE_URL": "", "REDIS_URL": "", "API_KEY": "k"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
