"""The package drawn from its imports (issue 38): no circle, nothing imports the command line,
no module over 400 lines, training reads folders (mmrec/data/ knows neither raw files nor the
synthetic generators), and the shims at old paths only re-export their new homes.

The graph is read from the source with ``ast``, not by importing: every ``import`` and
``from ... import`` of every mmrec module counts, inside functions and ``TYPE_CHECKING`` blocks
too; relative imports are resolved, and ``from pkg import name`` is an edge to the submodule
``pkg.name`` when there is one. A package ``__init__`` that imports its submodules has edges to
them; importing a submodule is not counted as importing its parent package.
"""

from __future__ import annotations

import ast
import importlib
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mmrec"
MAX_LINES = 400

#: Old module paths kept so that old imports, configs and checkpoints work: each re-exports its
#: new home(s) and holds nothing else. They are left out of the circle check.
SHIMS: dict[str, tuple[str, ...]] = {
    **{
        f"mmrec.data.{m}": (f"mmrec.ingest.{m}",)
        for m in (
            "prepare",
            "readers",
            "rawfiles",
            "sources",
            "metalines",
            "lines",
            "clean",
            "items",
            "report",
            "outputs",
            "errors",
        )
    },  # fmt: skip
    "mmrec.data.ingest": ("mmrec.ingest.stream",),
    "mmrec.data.synthetic": ("mmrec.synthetic.dataset",),
    "mmrec.data.synthetic_events": ("mmrec.synthetic.events",),
    "mmrec.data.synthetic_items": ("mmrec.synthetic.items",),
    "mmrec.data.synthetic_raw": ("mmrec.synthetic.raw",),
    "mmrec.experiments.refit": ("mmrec.experiments.execute", "mmrec.experiments.plan"),
}
#: The command line: the top of the graph, imported by nothing in the package.
COMMAND_LINE = {"mmrec.cli", "mmrec.__main__"}
#: What training (mmrec/data/) may take from ingestion: the datamodule prepares a missing
#: folder from its ``prepare`` settings (a constructor argument, part of every run's config).
DATA_FROM_INGEST = {
    ("mmrec.data.datamodule", "mmrec.ingest.settings"),
    ("mmrec.data.datamodule", "mmrec.ingest.prepare"),
}
#: What ingestion may take from mmrec/data/: the per-event fields, declared once with the batch
#: contract (prepare writes their columns, the datamodule reads them).
INGEST_FROM_DATA = {"mmrec.data.batch"}


def _name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _tree(module: str) -> ast.Module:
    return ast.parse(_modules()[module].read_text(), filename=str(_modules()[module]))


def _owner(name: str) -> str | None:
    """The mmrec module ``name`` (dotted) is or lies in; None outside mmrec."""
    modules = _modules()
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports_in(tree: ast.Module, module: str, is_package: bool) -> frozenset[str]:
    """The mmrec modules the source ``tree`` of ``module`` imports, anywhere in it."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in _modules() else source)
    owners = {_owner(name) for name in found if name == "mmrec" or name.startswith("mmrec.")}
    return frozenset(o for o in owners if o is not None and o != module)


@cache
def _imports(module: str) -> frozenset[str]:
    """The mmrec modules ``module`` imports, anywhere in its source."""
    return _imports_in(_tree(module), module, _modules()[module].name == "__init__.py")


def _graph(skip: set[str] = frozenset()) -> dict[str, set[str]]:
    return {m: set(_imports(m)) - skip for m in _modules() if m not in skip}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one circle
    through its modules (a path that comes back to its start)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    circles = []
    for component in components:  # one concrete circle: a shortest way back to the start
        start = min(component)
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            nxt = sorted(graph[path[-1]] & component)
            if start in nxt:
                circles.append([*path, start])
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w)
                    paths.append([*path, w])
    return circles


def _is_reexport(node: ast.stmt) -> bool:
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return isinstance(node.value.value, str)  # the docstring
    if isinstance(node, ast.ImportFrom | ast.Import):
        return True
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"]
    return False


def test_the_graph_is_read_from_every_module():
    assert "mmrec.module" in _modules() and "mmrec.data.datamodule" in _modules()
    assert "mmrec.data.eventlog" in _imports("mmrec.module")
    assert "mmrec.lightning_cli" in _imports("mmrec.experiments.tracking")  # inside a function
    assert "mmrec.content.models" in _imports("mmrec.content.pixels")  # under TYPE_CHECKING
    source = """
from mmrec.ingest import prepare, settings
from . import rows
from ..sequence import GPT2Sequence
import mmrec.calendar, numpy
def f():
    from mmrec.data.batch import Batch  # the module itself, not a name in it
    from .dataset import _Rows
"""
    tree = ast.parse(source)
    assert _imports_in(tree, "mmrec.data.x", is_package=False) == {
        "mmrec.ingest.prepare", "mmrec.ingest.settings", "mmrec.data.rows", "mmrec.sequence",
        "mmrec.calendar", "mmrec.data.batch", "mmrec.data.dataset",
    }  # fmt: skip
    # a circle is found and named
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_circle():
    circles = _circles(_graph(skip=set(SHIMS)))
    assert not circles, "import circles among mmrec modules: " + "; ".join(
        " -> ".join(c) for c in circles
    )


@pytest.mark.parametrize("shim", sorted(SHIMS))
def test_a_shim_only_reexports_its_new_home(shim):
    assert shim in _modules(), f"{shim} is listed in SHIMS but does not exist"
    extra = [
        f"line {n.lineno}: {ast.dump(n)[:60]}" for n in _tree(shim).body if not _is_reexport(n)
    ]
    assert not extra, f"{shim} is a shim and may hold only imports from its new home: {extra}"
    assert _imports(shim) == set(SHIMS[shim]), (
        f"{shim} imports {sorted(_imports(shim))}, its new home is {list(SHIMS[shim])}"
    )
    module = importlib.import_module(shim)
    homes = [importlib.import_module(home) for home in SHIMS[shim]]
    names = [n for n in vars(module) if not n.startswith("__")]
    assert names, f"{shim} re-exports nothing"
    for name in names:
        assert any(getattr(home, name, None) is getattr(module, name) for home in homes), (
            f"{shim}.{name} is not its new home's {name}"
        )


def test_nothing_imports_the_command_line():
    offenders = sorted(
        m for m in _modules() if m not in COMMAND_LINE and "mmrec.cli" in _imports(m)
    )
    assert not offenders, (
        f"{offenders} import mmrec.cli: the command line is the top of the package; take "
        "run_lightning / resolve_config from mmrec.lightning_cli"
    )


def test_no_module_over_400_lines():
    long = {
        m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them along a seam): {long}"


def test_training_reads_folders_and_ingestion_knows_no_batches():
    data = [m for m in _modules() if m.startswith("mmrec.data.") and m not in SHIMS]
    from_ingest = sorted((m, i) for m in data for i in _imports(m) if i.startswith("mmrec.ingest"))
    unexpected = [pair for pair in from_ingest if pair not in DATA_FROM_INGEST]
    assert not unexpected, f"mmrec/data/ modules import raw-file ingestion: {unexpected}"
    ingest = [m for m in _modules() if m.startswith("mmrec.ingest")]
    from_data = sorted((m, i) for m in ingest for i in _imports(m) if i.startswith("mmrec.data."))
    unexpected = [(m, i) for m, i in from_data if i not in INGEST_FROM_DATA]
    assert not unexpected, f"ingestion imports training-time data code: {unexpected}"


def test_only_tests_and_benchmarks_use_the_synthetic_generators():
    offenders = sorted(
        (m, i)
        for m in _modules()
        if not m.startswith("mmrec.synthetic") and m not in SHIMS
        for i in _imports(m)
        if i.startswith("mmrec.synthetic")
    )
    assert not offenders, f"library modules import the synthetic generators: {offenders}"


def test_encoders_read_features_and_never_fetch():
    fetching = {"mmrec.content.images", "mmrec.content.urls", "mmrec.ingest.sources"}
    offenders = sorted(
        (m, i)
        for m in _modules()
        if m.startswith("mmrec.encoders")
        for i in _imports(m)
        if i in fetching
    )
    assert not offenders, f"encoders import a fetcher (an encoder reads features): {offenders}"


def test_content_takes_text_cleaning_from_its_own_home():
    offenders = sorted(
        (m, i)
        for m in _modules()
        if m.startswith("mmrec.content")
        for i in _imports(m)
        if i.startswith(("mmrec.ingest", "mmrec.data."))
    )
    assert not offenders, f"content code imports raw-data code (mmrec.text cleans): {offenders}"
