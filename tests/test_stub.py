"""python/prospect_core/_C.pyi against the built extension: the same names at module level and in every
class, the same parameters (names, order, which have defaults, the default values) for every function
and method, and the stub installed with the package."""

import ast
import importlib.metadata as md
import types
from pathlib import Path

import pytest

from prospect_core import _C

STUB = Path(__file__).resolve().parents[1] / "python" / "prospect_core" / "_C.pyi"
# What pybind11 or Python put on every module or class, not part of the extension's interface.
MODULE_DUNDERS = {"__doc__", "__file__", "__loader__", "__name__", "__package__", "__spec__"}
CLASS_DUNDERS = {"__doc__", "__module__", "__dict__", "__weakref__"}


def is_exported(name, standard):
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__") and name not in standard)


def stub_tree():
    return ast.parse(STUB.read_text())


def stub_names(body):
    """Names a stub module or class body defines, the stub's private aliases (_Name) left out."""
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if is_exported(n, set())}


def stub_classes():
    return {node.name: node for node in stub_tree().body if isinstance(node, ast.ClassDef)}


def stub_functions(body):
    """name -> FunctionDef, overloads left out (pybind11 has none here), properties left out."""
    out = {}
    for node in body:
        if not isinstance(node, ast.FunctionDef):
            continue
        decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
        if "property" in decorators or "overload" in decorators:
            continue
        out[node.name] = node
    return out


def module_names():
    return {n for n in vars(_C) if is_exported(n, MODULE_DUNDERS)}


def class_names(cls):
    # A slot wrapper is pybind11's placeholder (__init__ of a class with no constructor: "No constructor
    # defined!"), not something the extension defines.
    return {
        n
        for n, v in vars(cls).items()
        if is_exported(n, CLASS_DUNDERS) and not isinstance(v, types.WrapperDescriptorType)
    }


def optional(name):
    """Names the stub declares that a build may leave out: VideoReader without OpenCV."""
    return name == "VideoReader" and not _C.has_opencv


def test_module_names_match_the_stub():
    stub = stub_names(stub_tree().body)
    real = module_names()
    assert real - stub == set(), "exported by _C but missing from _C.pyi"
    assert {n for n in stub - real if not optional(n)} == set(), "in _C.pyi but not exported by _C"


def test_class_members_match_the_stub():
    for name, node in stub_classes().items():
        if optional(name):
            continue
        cls = getattr(_C, name)
        stub = stub_names(node.body)
        real = class_names(cls)
        assert real - stub == set(), f"{name}: members missing from _C.pyi"
        assert stub - real == set(), f"{name}: members in _C.pyi that _C.{name} lacks"


def split_top_level(text):
    """Splits pybind11's parameter list on the commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def pybind_params(fn):
    """[(name, has_default, default)] from the signature line pybind11 writes at the top of __doc__."""
    line = fn.__doc__.lstrip().splitlines()[0]
    start = line.index("(") + 1
    depth, end = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(line[end], 0)
        end += 1
    params = []
    for part in split_top_level(line[start : end - 1]):
        head, _, default = part.partition(" = ")
        params.append((head.split(":")[0].strip(), bool(default), default))
    return params


def literal(text):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None  # a pybind11 repr that is no Python literal: compared by presence only
    return list(value) if isinstance(value, (list, tuple)) else value


def check_signature(where, stub_fn, real_fn, method):
    real = pybind_params(real_fn)
    args = stub_fn.args
    names = [a.arg for a in args.posonlyargs + args.args]
    defaults = [None] * (len(names) - len(args.defaults)) + list(args.defaults)
    if method and names and names[0] == "self":
        names, defaults = names[1:], defaults[1:]
        real = real[1:]  # pybind11's self
    assert names == [r[0] for r in real], f"{where}: parameters"
    for name, stub_default, (_, has_default, real_default) in zip(names, defaults, real):
        assert (stub_default is not None) == has_default, f"{where}: default of {name}"
        if stub_default is None:
            continue
        want = literal(real_default)
        if want is not None or real_default == "None":
            assert literal(ast.unparse(stub_default)) == want, f"{where}: default of {name} ({real_default})"


def test_function_signatures_match_the_stub():
    for name, node in stub_functions(stub_tree().body).items():
        check_signature(name, node, getattr(_C, name), method=False)
    for name in ("drop_middle", "drop_all"):  # overloaded in the stub only: each overload has its parameters
        for node in stub_tree().body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                check_signature(name, node, getattr(_C, name), method=False)


@pytest.mark.parametrize("cls_name", ["Span", "KVCache", "GenerateResult", "SmolVLM", "VideoReader"])
def test_method_signatures_match_the_stub(cls_name):
    if optional(cls_name):
        pytest.skip("built without OpenCV")
    cls = getattr(_C, cls_name)
    node = stub_classes()[cls_name]
    for name, fn in stub_functions(node.body).items():
        real = vars(cls)[name]
        method = not isinstance(real, staticmethod)
        check_signature(f"{cls_name}.{name}", fn, getattr(cls, name), method=method)


def test_properties_are_properties():
    for cls_name, node in stub_classes().items():
        if optional(cls_name):
            continue
        cls = getattr(_C, cls_name)
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and any(
                isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list
            ):
                assert isinstance(vars(cls)[item.name], property), f"{cls_name}.{item.name} is not a property"


def test_the_stub_is_installed_with_the_package():
    files = {str(f) for f in md.files("prospect-core")}
    assert "prospect_core/_C.pyi" in files
    assert "prospect_core/py.typed" in files
    installed = Path(_C.__file__).with_name("_C.pyi")
    assert installed.read_text() == STUB.read_text(), "the installed stub is stale: reinstall with pip install ."
