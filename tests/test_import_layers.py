"""advss_tf's imports point down the layers of docs/architecture.md: no upward or sideways import, no cycle between
packages, no private name taken from another package. Pure `ast`: nothing is imported, so it takes a second."""

from __future__ import annotations

import ast
import os
import re

import pytest
from conftest import REPO

ROOT = "advss_tf"
ARCHITECTURE = os.path.join(REPO, "docs", "architecture.md")


def read_layers(markdown: str) -> list[list[str]]:
    """The ```layers block: one layer per line, bottom first, units separated by spaces."""
    match = re.search(r"```layers\n(.*?)```", markdown, re.S)
    assert match, "docs/architecture.md has no ```layers block"
    return [line.split() for line in match.group(1).splitlines() if line.strip()]


def module_sources(package_dir: str) -> dict[str, str]:
    """Dotted module name → source path for every .py under `package_dir` (a package's name is its __init__)."""
    base = os.path.dirname(package_dir)
    out = {}
    for dirpath, _, files in os.walk(package_dir):
        for f in files:
            if f.endswith(".py"):
                parts = os.path.relpath(os.path.join(dirpath, f), base)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = os.path.join(dirpath, f)
    return out


def unit_of(module: str) -> str:
    """The layer unit of a module: its subpackage or top-level module under the root; `__init__` for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(module: str, path: str, modules: dict[str, str]) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every import of the root package in `path`, at any depth.

    `from a.b import c` is an import of the module a.b.c when that is a module, else of a.b with the name c.
    """
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_package = path.endswith("__init__.py")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names if alias.name.split(".")[0] == ROOT]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                target = ".".join(package + ([target] if target else []))
            if target.split(".")[0] != ROOT:
                continue
            names = []
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    out.append((node.lineno, f"{target}.{alias.name}", []))
                else:
                    names.append(alias.name)
            if names:
                out.append((node.lineno, target, names))
    return out


def private_attributes(path: str, module_aliases: dict[str, str]) -> list[tuple[int, str, str]]:
    """(line, module, name) for every `alias._name` where `alias` was bound to one of `module_aliases`' modules."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                out.append((node.lineno, module_aliases[node.value.id], node.attr))
    return out


def aliases_of(path: str, modules: dict[str, str]) -> dict[str, str]:
    """Local name → module for `import a.b as x` and `from a import b [as x]` where the result is a module."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if f"{node.module}.{a.name}" in modules:
                    out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def violations(package_dir: str, layers: list[list[str]]) -> list[str]:
    """Every import of `package_dir` that breaks the layering, as 'module:line: what' lines."""
    rank = {unit: i for i, layer in enumerate(layers) for unit in layer}
    modules = module_sources(package_dir)
    found, graph = [], {}
    for module, path in sorted(modules.items()):
        unit = unit_of(module)
        if unit not in rank:
            found.append(f"{module}: unit {unit!r} is in no layer of docs/architecture.md")
            continue
        for line, target, names in imports_of(module, path, modules):
            other = unit_of(target)
            if other == unit:
                continue
            graph.setdefault(unit, set()).add(other)
            if other not in rank:
                found.append(f"{module}:{line}: imports {target}, whose unit {other!r} is in no layer")
            elif rank[other] >= rank[unit]:
                way = "sideways" if rank[other] == rank[unit] else "up"
                found.append(f"{module}:{line}: imports {target} ({way}: {other} is not below {unit})")
            found += [f"{module}:{line}: imports private {target}.{n} across packages" for n in names if _private(n)]
        for line, target, name in private_attributes(path, aliases_of(path, modules)):
            if unit_of(target) != unit:
                found.append(f"{module}:{line}: uses private {target}.{name} across packages")
    found += [f"import cycle between packages: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected group of more than one node."""
    out, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                out.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return out


def test_advss_tf_imports_point_down_the_documented_layers():
    layers = read_layers(open(ARCHITECTURE, encoding="utf-8").read())
    units = [u for layer in layers for u in layer]
    assert len(units) == len(set(units)), "a unit is named in two layers"
    package = os.path.join(REPO, ROOT)
    present = {unit_of(m) for m in module_sources(package)}
    assert set(units) == present, f"layers name {set(units) - present or '-'}; not named: {present - set(units) or '-'}"
    assert violations(package, layers) == []


# -- the checker itself, on a made-up package ------------------------------------------------------------------------
def _write(root, files: dict[str, str]) -> str:
    for name, text in files.items():
        path = root / ROOT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root / ROOT)


LAYERS = [["__init__", "errors"], ["low", "side"], ["high"]]


def test_checker_accepts_imports_that_point_down(tmp_path):
    package = _write(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "low/__init__.py": "",
            "low/a.py": "from advss_tf.errors import E\nfrom . import b\n",
            "low/b.py": "import advss_tf.errors\n",
            "side.py": "from advss_tf import errors\n",
            "high.py": "from advss_tf.low import a\nimport advss_tf.side as s\n\ndef f():\n    from advss_tf import side\n",
        },
    )
    assert violations(package, LAYERS) == []


@pytest.mark.parametrize(
    "files, needle",
    [
        (
            {"low/a.py": "def f():\n    from advss_tf import high\n"},
            "imports advss_tf.high (up: high is not below low)",
        ),
        ({"low/a.py": "from advss_tf.side import x\n"}, "imports advss_tf.side (sideways"),
        ({"low/a.py": "from ..side import x\n"}, "imports advss_tf.side (sideways"),
        ({"high.py": "from advss_tf.low.a import _helper\n"}, "imports private advss_tf.low.a._helper"),
        ({"high.py": "from advss_tf.low import a\nv = a._helper\n"}, "uses private advss_tf.low.a._helper"),
        ({"extra.py": ""}, "unit 'extra' is in no layer"),
    ],
)
def test_checker_reports_upward_sideways_private_and_unlisted(tmp_path, files, needle):
    base = {"__init__.py": "", "errors.py": "", "low/__init__.py": "", "low/a.py": "", "side.py": "", "high.py": ""}
    found = violations(_write(tmp_path, {**base, **files}), LAYERS)
    assert len(found) == 1 and needle in found[0], found


def test_checker_reports_a_cycle_between_packages(tmp_path):
    # Same layer both ways: each import is sideways, and together they are a cycle.
    package = _write(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "from advss_tf import side\n",
            "side.py": "import advss_tf.low.a\n",
        },
    )
    found = violations(package, [["__init__"], ["low", "side"]])
    assert "import cycle between packages: low -> side -> low" in found, found
