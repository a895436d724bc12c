"""The documentation site (mkdocs.yml, docs/): every public class of mmrec has an API page, every
committed results table has a results page, and ``mkdocs build --strict`` passes."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mmrec"
API = REPO / "docs" / "api"
RESULTS = REPO / "benchmarks" / "results"
# `::: identifier` lines of mkdocstrings (a module or an object)
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)
SNIPPET = re.compile(r"""^--8<--\s+["']([^"']+)["']\s*$""", re.MULTILINE)

# Public-named classes that need no API entry, "module.Class" -> why. Empty today: add a class
# here only with a reason (e.g. a TypedDict that is a private helper's return type).
EXEMPT: dict[str, str] = {}


def _module_names() -> list[str]:
    """Every module of the package, from its files (nothing imported)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _import(name: str):
    """The module, or None where a third-party package it needs is not installed (an optional
    dependency); an error inside mmrec propagates."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing == "mmrec" or missing.startswith("mmrec."):
            raise
        return None


def _public_classes(module) -> list[type]:
    """Classes defined at the top level of ``module`` (not imported, not nested), public names."""
    return [
        obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_")
    ]


def _resolve(identifier: str):
    """The module or object a ``::: identifier`` names, or None for a module whose optional
    dependency is missing; raises LookupError when nothing has that name."""
    parts = identifier.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and f"{module_name}.".startswith(f"{err.name}."):
                continue  # not a module: try one level up
            if err.name and err.name != "mmrec" and not err.name.startswith("mmrec."):
                return None  # an optional dependency is missing
            raise
        obj = module
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise LookupError(identifier)


@cache
def _documented() -> tuple[frozenset[int], tuple[str, ...]]:
    """ids of the classes the API pages cover (a module covers each class defined in it, a
    class itself), and the identifiers that name nothing."""
    covered: set[int] = set()
    unknown = []
    for page in sorted(API.rglob("*.md")):
        for identifier in DIRECTIVE.findall(page.read_text()):
            try:
                obj = _resolve(identifier)
            except LookupError:
                unknown.append(f"{page.relative_to(REPO)}: {identifier}")
                continue
            if inspect.ismodule(obj):
                covered.update(id(c) for c in _public_classes(obj))
            elif inspect.isclass(obj):
                covered.add(id(obj))
    return frozenset(covered), tuple(unknown)


def test_api_pages_name_only_what_exists():
    _, unknown = _documented()
    assert not unknown, f"`:::` lines naming no module or object: {list(unknown)}"


@pytest.mark.parametrize("name", _module_names())
def test_every_public_class_has_an_api_page(name):
    module = _import(name)
    if module is None:
        pytest.skip(f"{name} needs an optional package that is not installed")
    covered, _ = _documented()
    missing = [
        f"{c.__module__}.{c.__qualname__}"
        for c in _public_classes(module)
        if id(c) not in covered and f"{c.__module__}.{c.__qualname__}" not in EXEMPT
    ]
    assert not missing, (
        f"public classes without an API page: {missing}; add `::: {name}` (or `::: <class>`) "
        "to a page of docs/api/, or list the class in EXEMPT with a reason"
    )


def test_exemptions_are_still_needed():
    """An exempt class that no longer exists (or now has a page) leaves the list."""
    covered, _ = _documented()
    for path in EXEMPT:
        obj = _resolve(path)
        assert inspect.isclass(obj), f"EXEMPT names {path}, which is not a class"
        assert id(obj) not in covered, f"{path} has an API page: remove it from EXEMPT"


def test_every_results_table_has_a_page():
    # experiments (and the folds of a rolling-origin experiment: <name>/<fold>/results.md) and
    # the top-level tables of the benchmark scripts
    tables = sorted(RESULTS.glob("*/results.md")) + sorted(RESULTS.glob("*/*/results.md"))
    tables += sorted(RESULTS.glob("*.md"))
    assert tables, "no committed results tables found"
    included = {
        (REPO / path).resolve()
        for page in (REPO / "docs" / "results").glob("*.md")
        for path in SNIPPET.findall(page.read_text())
    }
    missing = [str(t.relative_to(REPO)) for t in tables if t.resolve() not in included]
    assert not missing, (
        f"results tables without a page: {missing}; add docs/results/<name>.md holding "
        '`--8<-- "benchmarks/results/<name>/results.md"` and its line in mkdocs.yml nav'
    )


def test_home_page_is_the_readme():
    assert SNIPPET.findall((REPO / "docs" / "index.md").read_text()) == ["README.md"]


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def test_mkdocs_build_strict(tmp_path):
    for package in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if not _installed(package):
            pytest.skip(f"{package} is not installed (the dev extra installs it)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's end-of-life notice
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    problems = [line for line in out.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert out.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        problems or out.stderr.splitlines()[-20:]
    )
    assert (tmp_path / "api" / "model" / "index.html").is_file()
    assert "MMRecModule" in (tmp_path / "api" / "model" / "index.html").read_text()
