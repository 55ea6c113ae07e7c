"""The product (`wedsync_dr`) works without the dev tooling (`wedsync_dr_dev`): the break-glass restore runs
from an install of the product alone. The dev tooling may import the product, never the other way round."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = REPO / "include" / "wedsync_dr"

# Run in a fresh interpreter where `wedsync_dr_dev` cannot be imported, as on a host with only the product.
_WITHOUT_DEV = textwrap.dedent("""
    import importlib, importlib.abc, pkgutil, runpy, sys

    class NoDevTooling(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "wedsync_dr_dev" or name.startswith("wedsync_dr_dev."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: product-only install)", name=name)
            return None

    sys.meta_path.insert(0, NoDevTooling())
    for name in [n for n in list(sys.modules) if n == "wedsync_dr_dev" or n.startswith("wedsync_dr_dev.")]:
        del sys.modules[name]
    mode, argv = sys.argv[1], sys.argv[2:]
    if mode == "import-all":
        import wedsync_dr
        names = ["wedsync_dr"] + [m.name for m in pkgutil.walk_packages(wedsync_dr.__path__, "wedsync_dr.")]
        for name in names:
            importlib.import_module(name)
        assert not any(n.startswith("wedsync_dr_dev") for n in sys.modules), "wedsync_dr_dev was imported"
        print("imported", len(names))
    else:
        sys.argv = ["wedsync-dr", *argv]
        runpy.run_module("wedsync_dr.cli", run_name="__main__", alter_sys=True)
""")


def _without_dev(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    return subprocess.run([sys.executable, "-c", _WITHOUT_DEV, *argv], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_every_product_module_imports_without_the_dev_tooling():
    result = _without_dev("import-all")
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 20


def test_the_break_glass_verbs_run_without_the_dev_tooling():
    for verb in ("restore", "list", "verify", "rebuild-catalog", "emergency"):
        result = _without_dev("cli", verb, "--help")
        assert result.returncode == 0, (verb, result.stderr[-3000:])
        assert "usage: wedsync-dr" in result.stdout


def test_without_connections_or_dev_tooling_the_cli_says_what_to_set():
    result = _without_dev("cli", "list", "--class", "client_data")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("wedsync-dr: no connections: set AIRFLOW_CONN_WEDSYNC_DB"), result.stderr


def test_the_product_cli_has_no_dev_verbs():
    for verb in ("stack", "airflow", "demo-data", "backup"):
        result = _without_dev("cli", verb, "--help")
        assert result.returncode == 2 and "invalid choice" in result.stderr, verb


def _mentions(path: Path) -> bool:
    return "wedsync_dr_dev" in path.read_text(errors="replace")


def test_only_the_optional_stack_fallback_in_cli_mentions_the_dev_tooling():
    others = [p.relative_to(REPO) for p in sorted(PRODUCT.rglob("*"))
              if p.is_file() and "__pycache__" not in p.parts and p.name != "cli.py" and _mentions(p)]
    assert others == []
    tree = ast.parse((PRODUCT / "cli.py").read_text())
    dev_imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom | ast.Import)
                   and any((getattr(node, "module", None) or alias.name).startswith("wedsync_dr_dev")
                           for alias in node.names)]
    assert len(dev_imports) == 1
    # ... inside a function, guarded by `except ImportError`
    (function,) = [f for f in tree.body if isinstance(f, ast.FunctionDef) and dev_imports[0] in ast.walk(f)]
    assert function.name == "_use_connections"
    guards = [t for t in ast.walk(function) if isinstance(t, ast.Try) and dev_imports[0] in t.body]
    assert guards and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in guards[0].handlers)


def test_deployed_code_does_not_import_the_dev_tooling():
    """DAGs, plugins and the image's airflow-init run on Airflow hosts: product only."""
    deployed = [*sorted((REPO / "dags").rglob("*.py")), *sorted((REPO / "plugins").rglob("*.py")),
                REPO / "docker-compose.yml"]
    assert [p.relative_to(REPO) for p in deployed if _mentions(p)] == []


def test_console_scripts():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"wedsync-dr": "wedsync_dr.cli:main", "wedsync-dev": "wedsync_dr_dev.cli:main"}
