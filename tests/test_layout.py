"""The package's shape, checked rather than hoped for: no module reaches for another
module's private names, and the ledger stands on nothing above it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tokenbank"
#: What the ledger may never import: it is the core the others stand on.
ABOVE_THE_LEDGER = (
    "tokenbank.web",
    "tokenbank.cli",
    "tokenbank.billing",
    "tokenbank.payments",
    "tokenbank.grants",
    "tokenbank.users",
    "tokenbank.identity",
    "tokenbank.apikeys",
    "tokenbank.audit",
    "tokenbank.emulator",
    "tokenbank.client",
)


def _modules(*folders: Path) -> Iterator[Path]:
    for folder in folders:
        yield from sorted(p for p in folder.rglob("*.py") if "migrations" not in p.parts)


def _imports(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line, module, name) for each ``from module import name``; (line, module, None) for
    each ``import module``. A relative import is refused outright: every import names its
    module in full, so these checks see them all."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path}: relative import"
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                yield node.lineno, node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None


@pytest.mark.parametrize("folder", ["src", "tests", "bench"])
def test_no_module_imports_another_modules_private_names(folder: str) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {module}.{name}"
        for path in _modules(ROOT / folder)
        for line, module, name in _imports(path)
        if name is not None
        and name.startswith("_")
        and not name.startswith("__")
        and module.startswith(("tokenbank", "tests", "bench"))
    ]
    assert found == []


@pytest.mark.parametrize("folder", ["src", "tests", "bench"])
def test_no_module_reads_a_private_attribute_of_another_module(folder: str) -> None:
    """``ledger._move(...)`` is the same reach as importing ``_move``."""
    found = []
    for path in _modules(ROOT / folder):
        tree = ast.parse(path.read_text(), str(path))
        modules = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tokenbank")
            for alias in node.names
        } | {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
            if alias.name.startswith("tokenbank")
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert found == []


def test_the_ledger_imports_nothing_above_it() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in _modules(PACKAGE / "ledger")
        for line, module, _ in _imports(path)
        if module.startswith(ABOVE_THE_LEDGER)
    ]
    assert found == []


def test_mail_knows_nothing_of_what_letters_say() -> None:
    """The outbox and its senders are the ledger's neighbours: the letters (web/letters.py)
    and the accounts that send them stand above, and are passed in."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in _modules(PACKAGE / "mail")
        for line, module, _ in _imports(path)
        if module.startswith(ABOVE_THE_LEDGER)
    ]
    assert found == []
