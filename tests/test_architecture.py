"""The package's architecture: layers import only downwards, the objects and
the toolkit have no import cycles, and long files say why they are long.

The import graph is read from the sources with :mod:`ast`, not by importing
them: every ``import``/``from ... import`` at module level or inside a
function or class, and ``importlib.import_module("literal", __package__)``,
except what sits under ``if TYPE_CHECKING:`` (annotations only, never run).

Layers, bottom up (a module may import its own layer and those below):

====  ===========  ==================================================
rank  layer        modules
====  ===========  ==================================================
0     bindings     ``pyvfio._uapi``, ``pyvfio.errors``, ``pyvfio._sorted``, ``pyvfio._lazy``
1     backend      ``pyvfio.backend.*``
2     fake         ``pyvfio.fake.*`` (may import bindings and backend only)
3     core         ``pyvfio.core.*``
4     toolkit      ``pyvfio.toolkit.*``
5     setup        ``pyvfio.setup.*``
6     testing      ``pyvfio.testing.*``
7     facade       ``pyvfio`` (``__init__``) and ``pyvfio.__main__``
====  ===========  ==================================================

The facade may import anything; nothing may import the facade.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

PACKAGE = Path(__file__).resolve().parent.parent / "pyvfio"

#: Layer names by rank, bottom up.
LAYERS = ("bindings", "backend", "fake", "core", "toolkit", "setup", "testing", "facade")

#: Modules (and their submodules) in each layer.
LAYER_OF_PREFIX = {
    "pyvfio._uapi": "bindings",
    "pyvfio.errors": "bindings",
    "pyvfio._sorted": "bindings",
    "pyvfio._lazy": "bindings",
    "pyvfio.backend": "backend",
    "pyvfio.fake": "fake",
    "pyvfio.core": "core",
    "pyvfio.toolkit": "toolkit",
    "pyvfio.setup": "setup",
    "pyvfio.testing": "testing",
    "pyvfio.__main__": "facade",
}

#: Layers whose modules must not import each other in a cycle.
ACYCLIC = ("core", "toolkit")

#: Files longer than this must say why at the top.
MAX_LINES = 800
LONG_REASON = "Longer than 800 lines because"


# -- the graph ------------------------------------------------------------------------


def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every .py under pyvfio/."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name (None: in no layer)."""
    if module == "pyvfio":
        return "facade"
    for prefix, layer in LAYER_OF_PREFIX.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of the tree except the bodies of ``if TYPE_CHECKING:``
    (their ``else:`` runs, so it is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(reversed(node.orelse))
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _resolve(package: str, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...``."""
    base = package.split(".")
    if level:
        base = base[:len(base) - level + 1]
        return ".".join(base + ([name] if name else []))
    return name or ""


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The pyvfio modules ``module`` imports at run time."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(package, node.level, node.module)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                # "from . import sysfs" imports the module pyvfio.core.sysfs
                targets.add(sub if sub in known else source)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            name = node.args[0].value
            dots = len(name) - len(name.lstrip("."))
            targets.add(_resolve(package, dots, name.lstrip(".") or None) if dots else name)
    return {t for t in targets if t == "pyvfio" or t.startswith("pyvfio.")} - {module}


def import_graph() -> dict[str, set[str]]:
    """Module -> the pyvfio modules it imports at run time, for every
    module of the package."""
    modules = _modules()
    known = set(modules) | {"pyvfio._uapi"}  # the compiled bindings have no .py
    return {m: imports_of(m, p, known) for m, p in modules.items()}


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


# -- the tests ----------------------------------------------------------------------------


def test_every_module_is_in_a_layer() -> None:
    homeless = [m for m in import_graph() if layer_of(m) is None]
    assert not homeless, f"modules in no layer (add them to LAYER_OF_PREFIX): {homeless}"


def test_the_graph_sees_runtime_imports_only() -> None:
    """The extraction itself: edges that exist at run time are found
    (module level, function level, ``from . import x``), annotation-only
    ones are not."""
    graph = import_graph()
    assert "pyvfio.core.address_space" in graph["pyvfio.core.container"]
    assert "pyvfio.core.sysfs" in graph["pyvfio.core.group"]  # from . import sysfs
    assert "pyvfio.core.device" in graph["pyvfio.toolkit.attach"]
    assert "pyvfio.core.device" in graph["pyvfio.testing.plugin"]  # also inside a function
    # Device names Group, IOAS and IommuFd in annotations only
    assert not {"pyvfio.core.group", "pyvfio.core.iommufd"} & graph["pyvfio.core.device"]


def test_no_upward_imports() -> None:
    """No module imports a higher layer than its own (nothing imports the
    facade)."""
    upward = []
    for module, targets in sorted(import_graph().items()):
        layer = layer_of(module)
        if layer is None or layer == "facade":
            continue
        for target in sorted(targets):
            target_layer = layer_of(target)
            if target_layer is None or LAYERS.index(target_layer) > LAYERS.index(layer):
                upward.append(f"{module} ({layer}) imports {target} ({target_layer})")
    assert not upward, "upward imports:\n  " + "\n  ".join(upward)


def test_no_import_cycles_in_core_and_toolkit() -> None:
    graph = import_graph()
    sub = {m: {t for t in targets if layer_of(t) in ACYCLIC}
           for m, targets in graph.items() if layer_of(m) in ACYCLIC}
    cycles = [c for c in _strongly_connected(sub) if len(c) > 1]
    assert not cycles, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)


def test_long_files_say_why() -> None:
    """A source file over 800 lines has a line in its module docstring
    starting with "Longer than 800 lines because" (prefer splitting it)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not any(line.strip().startswith(LONG_REASON) for line in doc.splitlines()):
            offenders.append(f"{path.relative_to(PACKAGE.parent)} ({lines} lines)")
    assert not offenders, (
        f"files over {MAX_LINES} lines that do not say why (a line in the module "
        f"docstring starting with {LONG_REASON!r}):\n  " + "\n  ".join(offenders))
