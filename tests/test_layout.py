"""The tests' own layout: what tests share is imported from tests/helpers.py or tests/factories.py.

A conftest module imported by name is loaded a second time under another module name than the one
pytest gave it (two copies of its globals and fixtures), and a test module imported by another one
brings its tests along into the importer's namespace.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def test_no_test_imports_a_conftest_or_another_test_module():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for module in _imported_modules(path):
            last = module.rsplit(".", 1)[-1]
            if module.startswith("tests.") and (last == "conftest" or last.startswith("test_")):
                offenders.append(f"{path.relative_to(TESTS)}: {module}")
    assert offenders == [], offenders
