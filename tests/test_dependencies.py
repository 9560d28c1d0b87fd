"""Every package that nst_daemon/ imports directly is declared in pyproject.toml: none may arrive only
through another one (pydantic once came only through aiogram)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nst_daemon"


def imported_top_level_modules() -> set[str]:
    modules: set[str] = set()
    for path in (ROOT / "nst_daemon").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"nst_daemon"}


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    # The runtime extras count: ONNX Runtime comes as onnxruntime or onnxruntime-gpu (same module), Ray
    # only with the cluster backend (nst_daemon/cluster/ imports it when `backend = "ray"`).
    extras = project["optional-dependencies"]
    specs = [*project["dependencies"], *extras["cpu"], *extras["ray"]]
    return {normalize(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in specs}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_directly_imported_package_is_declared() -> None:
    installed = packages_distributions()
    declared = declared_distributions()
    undeclared = {
        module: installed.get(module, ["(not installed)"])
        for module in imported_top_level_modules()
        if not declared & {normalize(dist) for dist in installed.get(module, [module])}
    }
    assert undeclared == {}, f"imported by nst_daemon/ but not declared in pyproject.toml: {undeclared}"


def test_every_module_imports_on_its_own() -> None:
    """Each of nstd's modules can be the first one imported: a module that re-exports another's names (config
    and config_load, catalog and catalog_import) must not leave either half-made in some import order."""
    import subprocess

    modules = sorted(
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for path in PACKAGE.rglob("*.py")
        if path.name != "__main__.py"
    )
    # One interpreter: third-party packages stay imported, nstd's own are dropped before each import.
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'nst_daemon' or m.startswith('nst_daemon.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        print(f'{name}: {type(exc).__name__}: {exc}')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "", proc.stdout
    assert len(modules) > 50 and "nst_daemon.config_load" in modules
