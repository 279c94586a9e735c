"""The rooms stay as docs/architecture.md draws them: no import cycle, and no forbidden import.

Imports are read from the source (``ast``), at module level and inside functions alike, so a cycle
or a forbidden dependency cannot hide in a function body. Nothing is imported to check this."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "handlers", "segments")
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if "migrations" not in p.parts}


MODULES = _modules()


def _imported_names(path: Path) -> set[str]:
    """Every module name the file imports; ``from pkg import sub`` counts as ``pkg.sub`` when sub is
    a module, so importing a package's submodule is not mistaken for importing its ``__init__``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            names |= submodules
            if len(submodules) < len(node.names):
                names.add(node.module)
    return names


def _own(name: str) -> str | None:
    """The project module an import lands in (``bot.models.base`` for ``bot.models.base.X``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


IMPORTS = {module: _imported_names(path) for module, path in MODULES.items()}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, names in IMPORTS.items():
        for name in names:
            target = _own(name)
            if target and target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(MODULES):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _in(module: str, *rooms: str) -> bool:
    return any(module == room or module.startswith(room + ".") for room in rooms)


def _violations(rooms: Iterable[str], allowed: callable) -> list[str]:  # type: ignore[valid-type]
    return sorted(f"{module} imports {name}" for module, names in IMPORTS.items() if _in(module, *rooms)
                  for name in names if not allowed(name))


def test_the_reader_sees_every_module():
    assert {"bot.core.config", "bot.web.app", "segments.retier", "handlers.kf"} <= MODULES.keys()
    assert any("flask" in names for names in IMPORTS.values())


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = defaultdict(set, {"bot.core.config": {"bot.campaigns.rules"},
                              "bot.campaigns.rules": {"bot.outbox.messages"},
                              "bot.outbox.messages": {"bot.core.config"}})
    assert _cycles(graph) == [["bot.campaigns.rules", "bot.core.config", "bot.outbox.messages"]]


def test_models_import_only_sqlalchemy():
    assert _violations(["bot.models"], lambda n: n.split(".")[0] in STDLIB | {"sqlalchemy"}
                       or _in(n, "bot.models")) == []


def test_core_is_the_ground_floor():
    """Config, database and clock import no domain, no web framework: everything else builds on them."""
    assert _violations(["bot.core"], lambda n: _in(n, "bot.core", "bot.models") or (
        not _in(n, "bot", "handlers", "segments", "flask", "werkzeug"))) == []


def test_segments_know_no_web_and_no_service_shell():
    assert _violations(["segments"], lambda n: _in(n, "segments", "bot.core", "bot.models") or (
        not _in(n, "bot", "handlers", "flask", "werkzeug", "jinja2", "wechatpy"))) == []


def test_only_the_web_surface_uses_flask():
    """Domains take plain inputs; the web surface, the sandbox and ``scrm serve`` are the Flask edge."""
    edge = ("bot.web", "bot.sandbox", "bot.cli")
    assert [v for v in _violations(["bot", "handlers", "segments"], lambda n: not _in(n, "flask", "werkzeug"))
            if not _in(v.split()[0], *edge)] == []


def test_handlers_only_react():
    assert _violations(["handlers"], lambda n: not _in(n, "bot.web", "bot.cli", "bot.schedule", "bot.sandbox",
                                                        "bot.demo", "bot.startup")) == []


def test_the_lab_stays_out_of_the_house():
    """The sandbox and the demo are reached only from the CLI (and tests); nothing imports the CLI."""
    lab = [v for v in _violations(["bot", "handlers", "segments"],
                                  lambda n: not _in(n, "bot.sandbox", "bot.demo", "bot.cli"))
           if not _in(v.split()[0], "bot.sandbox", "bot.demo", "bot.cli")]
    assert lab == []
    assert _violations(["bot.sandbox", "bot.demo"], lambda n: not _in(n, "bot.cli")) == []


@pytest.mark.parametrize("package", sorted({m for m in MODULES if MODULES[m].name == "__init__.py"}))
def test_every_package_says_what_it_owns(package):
    assert ast.get_docstring(ast.parse(MODULES[package].read_text(encoding="utf-8"))), package
