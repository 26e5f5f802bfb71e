"""The sans-I/O layers import no I/O, threads or clocks (DESIGN.md, layering rule)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "dataplane"
SANS_IO = [
    "wireguard",
    "routing",
    "filter",
    "timers.py",
    "core.py",
    "_batch.pyx",
    "_crypto.pyx",
    "_ident.pyx",
    "netstack/tcp.py",
    "netstack/_tcp.pyx",
]
FORBIDDEN = {
    "threading",
    "time",
    "socket",
    "select",
    "selectors",
    "asyncio",
    "dataplane.driver",
    "dataplane.transport",
}


def sans_io_files() -> list[Path]:
    files: list[Path] = []
    for entry in SANS_IO:
        path = PKG / entry
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".py", ".pyx"))
        elif path.exists():
            files.append(path)
    return files


def imported_modules(path: Path) -> set[str]:
    source = path.read_text()
    if path.suffix == ".pyx":
        # Cython syntax is not Python; the import lines are, so parse just those.
        lines = [
            ln.strip()
            for ln in source.splitlines()
            if ln.strip().startswith(("import ", "from ")) and " cimport " not in ln
        ]
        source = "\n".join(ln for ln in lines if not ln.endswith(("(", ",")))
    mods: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
    return mods


def test_there_are_files_to_check():
    assert len(sans_io_files()) >= 3


@pytest.mark.parametrize("path", sans_io_files(), ids=lambda p: str(p.relative_to(PKG)))
def test_sans_io_layer_imports_no_io(path: Path):
    bad = {
        m
        for m in imported_modules(path)
        if m in FORBIDDEN or any(m.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"
