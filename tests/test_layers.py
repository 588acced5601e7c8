"""The one-way flow of imports: every `unmirage` import in src/ (module level, inside functions and under
`if TYPE_CHECKING:` alike, since a type-only import still couples the modules) goes down the layer table below,
and no two modules import each other, directly or through others, at run time (type-only imports are left out
of the cycle check: `models.families.base` names `models.tiny`'s types, which import the families).

A *room* is a top-level module or package of `unmirage` (`unmirage.data.build` is in `data`). A room may
import its own modules and the rooms of lower layers, never a room of its own layer or above; the rooms of
`TOP` (the command line, MirageLab, the Python API, the pipeline runner and the package root) may import
anything. A new room must be given a layer here (the test names it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import unmirage

SRC = Path(unmirage.__file__).resolve().parent

# Lowest first. Pipeline order: data -> methods -> train -> generate -> (llm) -> judges -> metrics -> report.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "stats", "text", "version", "machine"),  # leaves: need nothing of unmirage (text: pure text)
    ("config", "placeholder", "runs"),  # errors / version only
    ("outputs",),  # run identity and ownership, over runs
    ("models",),  # loading, families, tiny models
    ("settings",),  # settings of the torch-heavy commands (their prompt templates come from models)
    ("data",),  # records, conversations, images, forget/retain sets, collation
    ("methods",),
    ("train",),
    ("generate",),
    ("llm",),  # the LLM client: its local backend answers through generate
    ("judges",),  # judge classes, their registry and the ASR cascades
    ("metrics", "benchmarks"),
    ("report", "utility", "analysis", "attacks"),
    ("attacks_gcg",),  # builds its attack files through attacks
    ("eval", "mining", "lmeval"),  # load a model and run it end to end
)
TOP = ("cli", "lab", "api", "pipeline", "unmirage", "__main__")

# Upward imports that remain, as (importing module, imported module), each with the reason it cannot go yet.
KNOWN_UPWARD: frozenset[tuple[str, str]] = frozenset()


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages by their __init__.py)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _nodes(tree: ast.AST, type_checking: bool) -> Iterable[ast.AST]:
    for node in ast.iter_child_nodes(tree):
        if type_checking or not _type_checking(node):
            yield node
            yield from _nodes(node, type_checking)


def imports(name: str, path: Path, known: Iterable[str], *, type_checking: bool = True) -> set[str]:
    """The `unmirage` modules `name` imports anywhere in its file (a `from pkg import sub` counts as `pkg.sub`
    when that is a module); without `type_checking`, leaving out the `if TYPE_CHECKING:` blocks."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), type_checking):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m == "unmirage" or m.startswith("unmirage.")} - {name}


def import_graph(src: Path = SRC, *, type_checking: bool = True) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (with or without type-only imports)."""
    files = modules(src)
    return {name: imports(name, path, files, type_checking=type_checking) for name, path in files.items()}


def room(module: str) -> str:
    """`unmirage.data.build` -> `data`; the package root is `unmirage`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(name: str) -> int | None:
    """The layer index of a room (TOP is above every layer), None for a room not in the table."""
    if name in TOP:
        return len(LAYERS)
    return next((i for i, rooms in enumerate(LAYERS) if name in rooms), None)


def upward_edges(graph: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
    """(importer, imported) for every import into another room of the same or a higher layer."""
    bad = []
    for module, targets in graph.items():
        here = layer_of(room(module))
        if here is None or room(module) in TOP:
            continue
        for target in targets:
            there = layer_of(room(target))
            if room(target) != room(module) and (there is None or there >= here):
                bad.append((module, target))
    return sorted(bad)


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_room_has_a_layer() -> None:
    rooms = {room(m) for m in modules()}
    missing = sorted(r for r in rooms if layer_of(r) is None)
    assert not missing, f"rooms without a layer in tests/test_layers.py LAYERS: {missing}"
    listed = {r for rooms_ in LAYERS for r in rooms_} | set(TOP)
    assert not listed - rooms, f"LAYERS names rooms that no longer exist: {sorted(listed - rooms)}"


def test_no_upward_import() -> None:
    edges = upward_edges(import_graph())
    new = [e for e in edges if e not in KNOWN_UPWARD]
    assert not new, "imports against the layer order (importer -> imported):\n" + "\n".join(
        f"  {a} -> {b}" for a, b in new
    )
    stale = sorted(KNOWN_UPWARD - set(edges))
    assert not stale, f"KNOWN_UPWARD lists edges that are gone, remove them: {stale}"


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph(type_checking=False)) == []


def test_text_is_a_leaf_package() -> None:
    graph = import_graph()
    outside = {t for m, ts in graph.items() if room(m) == "text" for t in ts if room(t) != "text"}
    assert outside == set()


def test_the_checks_catch_what_they_must() -> None:
    # an upward import, an import into the same layer, an unknown room; downward and TOP imports pass
    graph = {
        "unmirage.data.build": {"unmirage.eval", "unmirage.runs", "unmirage.data.vlguard"},
        "unmirage.metrics": {"unmirage.benchmarks.spec", "unmirage.judges.base"},
        "unmirage.report.build": {"unmirage.newroom"},
        "unmirage.cli.eval": {"unmirage.eval", "unmirage.lab.run"},
    }
    assert upward_edges(graph) == [
        ("unmirage.data.build", "unmirage.eval"),
        ("unmirage.metrics", "unmirage.benchmarks.spec"),
        ("unmirage.report.build", "unmirage.newroom"),
    ]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_from_every_place(tmp_path: Path) -> None:
    package = tmp_path / "unmirage"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "x.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import y\n"
        "if TYPE_CHECKING:\n    from unmirage.models import LoadedModel\n"
        "def f():\n    from ..eval import run_eval\n    import unmirage.judges.base\n"
    )
    (package / "data" / "y.py").write_text("")
    assert import_graph(package)["unmirage.data.x"] == {
        "unmirage.data.y",
        "unmirage.models",
        "unmirage.eval",
        "unmirage.judges.base",
    }
    assert "unmirage.models" not in import_graph(package, type_checking=False)["unmirage.data.x"]
