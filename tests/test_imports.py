"""The package's import graph, read from the source: no import cycles, and no module taking another module's
private (_underscore) names.

Every `import` and `from ... import` counts, at module level or inside a function (a function-level import
closes a cycle as surely, only later), except under `if TYPE_CHECKING:`. `from pkg import name` is an edge to
the submodule pkg.name when there is one, else to pkg. Importing a.b.c also runs a/__init__ and a/b/__init__
first; those implicit parent imports are not edges, or every module would close a cycle through the package.
"""

import ast
import pkgutil
from pathlib import Path

import prospect_core

PACKAGE = "prospect_core"


def package_modules():
    """{module name: source path or None (an extension module)} for the package and everything under it."""
    mods = {PACKAGE: Path(prospect_core.__file__)}
    for info in pkgutil.walk_packages(prospect_core.__path__, PACKAGE + "."):
        spec = info.module_finder.find_spec(info.name)
        origin = spec.origin if spec is not None else None
        mods[info.name] = Path(origin) if origin and origin.endswith(".py") else None
    return mods


def _type_checking_block(node):
    test = node.test
    return isinstance(node, ast.If) and (
        getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"
    )


def _import_nodes(tree):
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_block(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(importer, is_package, node):
    """The absolute module a `from` import names (relative imports resolved against the importer)."""
    if node.level == 0:
        return node.module
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(mods):
    """({importer: {imported package module}}, [(importer, module, private name)])."""
    edges, private = {m: set() for m in mods}, []
    for name, path in mods.items():
        if path is None:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in _import_nodes(tree):
            if isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names if a.name in mods}
                continue
            source = _resolve(name, path.name == "__init__.py", node)
            if source not in mods:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in mods:  # a submodule, even one named _C
                    edges[name].add(sub)
                    continue
                edges[name].add(source)
                if alias.name.startswith("_") and not alias.name.startswith("__") and source != name:
                    private.append((name, source, alias.name))
    for name in edges:
        edges[name].discard(name)
    return edges, private


def find_cycle(edges):
    """One cycle as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_read_from_every_module():
    mods = package_modules()
    assert {"prospect_core.compare", "prospect_core.server.app", "prospect_core._C"} <= set(mods)
    edges, _ = import_graph(mods)
    # Module level, inside a function, and the submodule a `from package import name` names.
    assert "prospect_core.video_unit" in edges["prospect_core.compare"]
    assert "prospect_core.hf" in edges["prospect_core.backends"]
    assert "prospect_core._C" in edges["prospect_core.backends"]


def test_no_import_cycles():
    edges, _ = import_graph(package_modules())
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_runtime_does_not_import_the_tools():
    """prospect_core.tools (checkpoint forging, parity checks) stands beside the runtime: only the package's
    make_model re-export, the CLI and the tools themselves import it."""
    mods = package_modules()
    tools = {m for m in mods if m == f"{PACKAGE}.tools" or m.startswith(f"{PACKAGE}.tools.")}
    assert {f"{PACKAGE}.tools.make_model", f"{PACKAGE}.tools.smollm2", f"{PACKAGE}.tools.verify"} <= tools
    edges, _ = import_graph(mods)
    users = {m for m, imported in edges.items() if imported & tools and m not in tools}
    assert users == {PACKAGE, f"{PACKAGE}.cli"}


def test_no_private_names_from_other_modules():
    _, private = import_graph(package_modules())
    assert private == [], "\n".join(f"{a} imports {name} from {b}" for a, b, name in private)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
