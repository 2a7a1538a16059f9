"""The import rule of docs/architecture.md, read from the source with ``ast`` (no import runs).

The shared library imports no service and not the composition root; a service imports no other
service and not the composition root; no two modules import each other, directly or round a
loop (imports inside functions and under ``TYPE_CHECKING`` count too); no module is over 600
lines, and the product (libs, services, apps) is under 12,000. Strings handed to ``import_module``
count as imports.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "ccproxy_core"
APP = "ccproxy_app"
MAX_LINES = 600
#: The whole product's Python, counted as ``find libs services apps -name '*.py' | xargs cat | wc -l`` does.
MAX_PRODUCT_LINES = 12_000


def packages() -> dict[str, Path]:
    """Top-level package name -> its directory, for the library, each service and the app."""
    dirs = [ROOT / "libs" / "core" / CORE, ROOT / "apps" / "ccproxy" / APP]
    dirs += [p for p in sorted((ROOT / "services").glob("*/ccproxy_*")) if p.is_dir()]
    return {d.name: d for d in dirs}


PACKAGES = packages()
SERVICES = set(PACKAGES) - {CORE, APP}


def module_name(path: Path, package_dir: Path) -> str:
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package_dir in PACKAGES.values():
        for path in sorted(package_dir.rglob("*.py")):
            if "tests" not in path.relative_to(package_dir).parts:
                found[module_name(path, package_dir)] = path
    return found


MODULES = modules()


def imported_names(path: Path, name: str) -> set[str]:
    """Every module name ``path`` imports anywhere in it, absolute (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}  # ``from pkg import submodule``
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    out.add(arg.value)
    return out


def graph() -> dict[str, set[str]]:
    """Module -> the modules of this repository it imports."""
    return {name: {m for m in imported_names(path, name) if m in MODULES and m != name}
            for name, path in MODULES.items()}


GRAPH = graph()


def test_the_layout_is_found() -> None:
    assert {CORE, APP, "ccproxy_gateway", "ccproxy_auth", "ccproxy_forwarder"} <= set(PACKAGES)
    assert len(SERVICES) == 6
    assert f"{CORE}.cli" in MODULES and f"{APP}.cli" in MODULES


def test_shared_library_imports_no_service() -> None:
    arrows = sorted(
        f"{name} -> {target}"
        for name, path in MODULES.items() if name.split(".")[0] == CORE
        for target in imported_names(path, name) if target.split(".")[0] in SERVICES | {APP}
    )
    assert not arrows, arrows


def test_no_service_imports_another() -> None:
    arrows = sorted(
        f"{name} -> {target}"
        for name, path in MODULES.items() if (own := name.split(".")[0]) in SERVICES
        for target in imported_names(path, name) if target.split(".")[0] in (SERVICES | {APP}) - {own}
    )
    assert not arrows, arrows


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def test_cycle_finder_finds_a_loop() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_loop() -> None:
    cycles = find_cycles(GRAPH)
    assert not cycles, cycles


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name: str) -> None:
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


def test_product_size() -> None:
    files = [p for top in ("libs", "services", "apps") for p in (ROOT / top).rglob("*.py")]
    lines = sum(p.read_bytes().count(b"\n") for p in files)
    assert len(files) > 50 and lines < MAX_PRODUCT_LINES, f"{lines} lines in {len(files)} files"


def declared_entry_points() -> list[tuple[str, str, str, str]]:
    """(distribution folder, group, name, "module:attr") of every ``ccproxy.*`` entry point."""
    found = []
    for pyproject in sorted([*ROOT.glob("services/*/pyproject.toml"), *ROOT.glob("apps/*/pyproject.toml"),
                             ROOT / "libs" / "core" / "pyproject.toml"]):
        groups = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"].get("entry-points", {})
        for group, entries in groups.items():
            found += [(pyproject.parent.name, group, name, value) for name, value in entries.items()]
    return found


ENTRY_POINTS = declared_entry_points()


def test_every_service_can_be_run() -> None:
    """Each service declares ``ccproxy run <its folder>``: an image's command depends on it."""
    services = {(folder, name) for folder, group, name, _ in ENTRY_POINTS if group == "ccproxy.services"}
    folders = {p.parent.name for p in ROOT.glob("services/*/pyproject.toml")}
    assert services == {(f, f) for f in folders}


@pytest.mark.parametrize(("folder", "group", "name", "value"), ENTRY_POINTS)
def test_entry_point_names_a_function_of_its_package(folder: str, group: str, name: str, value: str) -> None:
    module, _, attr = value.partition(":")
    assert group in ("ccproxy.services", "ccproxy.commands"), group
    assert module in MODULES, f"{name}: no module {module}"
    owner = next(d for d in PACKAGES.values() if d.parent.name == folder)
    assert module.split(".")[0] == owner.name, f"{folder} declares {module}, another package's"
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    assert any(isinstance(n, ast.FunctionDef) and n.name == attr for n in tree.body), f"{module} has no {attr}()"
