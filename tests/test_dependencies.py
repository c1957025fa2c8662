"""pyproject.toml declares exactly what the package imports (a pip install without a clone has every tool)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import megatron_truncdistill

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(megatron_truncdistill.__file__).parent
# Imported only where present, each behind a check that fails with one line (GPU extra, NGC container, opt-ins).
OPTIONAL = {"transformer_engine", "apex", "vllm", "wandb"}
# Declared because something the package uses needs it without importing it by name (pyproject.toml says which).
UNDECLARED_NEEDS = {"tensorboard"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level_modules() -> set[str]:
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"megatron_truncdistill", "__future__"}


def _declared() -> set[str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_normalize(re.split(r"[\[<>=!~ ;#]", d, maxsplit=1)[0]) for d in deps}


def test_every_import_is_declared_and_every_declaration_imported():
    owners = importlib.metadata.packages_distributions()
    imported = {_normalize(owners[m][0]) for m in _imported_top_level_modules() - OPTIONAL if m in owners}
    unknown = sorted(m for m in _imported_top_level_modules() - OPTIONAL if m not in owners)
    assert unknown == [], f"imported but not installed: {unknown}"
    declared = _declared() - {_normalize(n) for n in UNDECLARED_NEEDS}
    assert sorted(imported - declared) == [], "imported by the package but not declared in pyproject.toml"
    assert sorted(declared - imported) == [], "declared in pyproject.toml but never imported by the package"
