"""Imports only go downward, read from the source with ast (function-level imports included): core <- hub <- serve
<- web inside clipsearch, the builder beside the app, and no import cycle among clipsearch's modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "hub", "serve", "web")  # clipsearch's sub-packages, lowest first: each imports only those below


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for package in ("clipsearch", "builder")
           for path in sorted((ROOT / package).rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Every module `name` imports, anywhere in its body, absolute; `from package import module` counts as the
    module when it is one of ours."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return found


IMPORTS = {name: _imports(name) for name in MODULES}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _offending(importer: str, *packages: str) -> list[str]:
    return sorted(m for name, imported in IMPORTS.items() if _within(name, importer)
                  for m in imported if any(_within(m, p) for p in packages))


def test_the_layer_check_reads_what_it_should():
    assert "clipsearch.core.search" in MODULES and "builder.build" in MODULES
    assert "clipsearch.core.errors" in IMPORTS["clipsearch.core.search"]  # relative: from .errors import ...
    assert "clipsearch.core.gallery" in IMPORTS["clipsearch.serve.download"]  # relative: from ..core.gallery import ...


def test_core_has_no_gradio_no_hub_client_and_nothing_above_it():
    assert _offending("clipsearch.core", "gradio", "huggingface_hub", "clipsearch.hub", "clipsearch.serve",
                      "clipsearch.web") == []


def test_hub_imports_nothing_from_serve_or_web():
    assert _offending("clipsearch.hub", "gradio", "clipsearch.serve", "clipsearch.web") == []


def test_serve_imports_nothing_from_web():
    assert _offending("clipsearch.serve", "gradio", "clipsearch.web") == []


def test_the_builder_imports_neither_the_app_nor_its_serving_layers():
    assert _offending("builder", "app", "gradio", "clipsearch.web", "clipsearch.serve") == []


def test_clipsearch_never_imports_the_builder_or_the_app():
    assert _offending("clipsearch", "builder", "app") == []


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below(layer):
    above = [f"clipsearch.{name}" for name in LAYERS[LAYERS.index(layer) + 1:]]
    assert _offending(f"clipsearch.{layer}", *above) == []


def test_no_import_cycle_among_clipsearch_modules():
    graph = {name: sorted(m for m in imported if m in MODULES and m != name and _within(m, "clipsearch"))
             for name, imported in IMPORTS.items() if _within(name, "clipsearch")}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        for imported in graph[name]:
            visit(imported, path + [name])
        done.add(name)

    for name in graph:
        visit(name, [])
