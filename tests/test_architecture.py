"""The shape of the house: camzoo's imports form no cycle (function-level imports included), no
lower layer imports a higher one, and no module outgrows one job (400 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "camzoo"

# Lower layers first; a module may import only from its own layer or below.
LAYERS = [
    {"camzoo._version", "camzoo.io", "camzoo.maps", "camzoo.modelutil", "camzoo.batchnorm_folding", "camzoo.groundtruth",
     "camzoo.registry", "camzoo.world"},
    {"camzoo.inputs", "camzoo.explanation", "camzoo.targets"},
    {"camzoo.data"},
    {"camzoo.models"},
    {"camzoo.methods", "camzoo.metrics"},
    {"camzoo.api", "camzoo.inference"},
    {"camzoo.train"},
    {"camzoo.bench"},
    {"camzoo.cli", "camzoo.__main__"},
    {"camzoo"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """camzoo modules that ``name`` imports anywhere in its body (lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            # "from pkg import sub" imports the submodule pkg.sub when there is one
            targets = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in modules else base_name for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(name: str) -> int:
    best = None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if name == prefix or (name.startswith(prefix + ".") and prefix != "camzoo"):
                best = index
    assert best is not None or name == "camzoo", f"{name} is in no layer: add it to LAYERS"
    return len(LAYERS) - 1 if best is None else best


def test_no_import_cycles():
    edges = graph()
    # package __init__ modules re-export their children: an edge child -> own package's __init__ is
    # the only way back up, and it is what a cycle would look like
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_lower_layer_imports_a_higher_one():
    bad = [f"{a} ({layer_of(a)}) -> {b} ({layer_of(b)})"
           for a, targets in graph().items() for b in targets if layer_of(b) > layer_of(a)]
    assert not bad, "imports that climb up a layer: " + ", ".join(sorted(bad))


def test_data_models_and_metrics_never_import_the_harness_or_the_cli():
    for name, targets in graph().items():
        if name.startswith(("camzoo.data", "camzoo.models", "camzoo.metrics", "camzoo.methods")):
            assert not {t for t in targets if t.startswith(("camzoo.bench", "camzoo.cli"))}, name


def test_methods_know_nothing_of_metrics():
    for name, targets in graph().items():
        if name.startswith("camzoo.methods"):
            assert not {t for t in targets if t.startswith("camzoo.metrics")}, name


def test_no_module_over_400_lines():
    long = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in all_modules().items()}
    assert {n: c for n, c in long.items() if c > 400} == {}


def test_the_checker_finds_a_cycle_and_a_climb(tmp_path, monkeypatch):
    # a regression guard for the checker itself: two modules that import each other lazily
    fake = tmp_path / "camzoo"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("from . import a\n")
    (fake / "data" / "a.py").write_text("def f():\n    from .b import g\n")
    (fake / "data" / "b.py").write_text("def g():\n    from ..bench import x\n    from .a import f\n")
    (fake / "bench.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    edges = graph()
    assert "camzoo.data.b" in edges["camzoo.data.a"] and "camzoo.data.a" in edges["camzoo.data.b"]
    assert layer_of("camzoo.bench") > layer_of("camzoo.data.b") and "camzoo.bench" in edges["camzoo.data.b"]


def test_no_list_of_method_names_is_kept_outside_the_methods_registry():
    """Presets and scripts select methods by their declared facts (camzoo.methods.select_methods): a
    literal list, tuple or set naming three or more registered methods anywhere in camzoo/ (outside
    camzoo/methods/) or benchmarks/ is a list someone must remember to update."""
    from camzoo.methods import method_names

    names = set(method_names())
    roots = [PACKAGE, PACKAGE.parent / "benchmarks"]
    found = []
    for root in roots:
        for path in root.rglob("*.py"):
            if PACKAGE / "methods" in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                    named = {e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names}
                    if len(named) >= 3:
                        found.append(f"{path.name}:{node.lineno} {sorted(named)}")
    assert not found, found
