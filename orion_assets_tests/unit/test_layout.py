"""The package's layout holds: layers (pyproject's import-linter contracts), no import loop even through
imports inside functions, the method importable without Dagster, no module over 500 lines, and every
import inside a function deferring a heavy library and saying so."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import orion_assets

PACKAGE_DIR = Path(orion_assets.__file__).resolve().parent
PYPROJECT = PACKAGE_DIR.parent / "pyproject.toml"
MAX_LINES = 500
# What an import inside a function may defer: libraries that take seconds or much memory to import, Dagster
# and its definitions (every asset), which `orion sql` and `orion check` must not pay for, and the LLM
# backends a profile does not name (the openai client; torch).
DEFERRABLE = {
    "accelerate", "datasets", "great_expectations", "huggingface_hub", "math_verify", "matplotlib", "peft",
    "onnxruntime",  # onnxruntime.quantization imports onnx: only to build the int8 coherence embedder
    "sentence_transformers", "torch", "transformers", "trl", "dagster", "orion_assets.definitions",
    "mlflow", "wandb",  # [tracking]: only a profile that tracks with one imports it
    "orion_assets.llm.openai_backend", "orion_assets.llm.hf_backend",
}
SAYS_SO_WITHIN = 8  # lines above an import where its "deferred" comment may stand


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("orion_assets", include_external_packages=True, cache_dir=None)


def test_the_layer_contracts_hold() -> None:
    """pyproject.toml's [tool.importlinter] contracts: each layer imports only the layers below it, and
    only the Dagster layer (assets, io, definitions, cli) imports dagster."""
    # In its own process: import-linter's CLI reconfigures logging, which would silence the loggers of later tests.
    code = f"from importlinter.cli import lint_imports; raise SystemExit(lint_imports({str(PYPROJECT)!r}, no_cache=True))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_no_module_imports_itself_back_through_any_chain(graph: grimp.ImportGraph) -> None:
    """No loop of imports between modules, counting imports inside functions (grimp reads them all)."""
    modules = [m for m in graph.modules if m.startswith("orion_assets")]
    loops = sorted({
        " -> ".join((importer, *graph.find_shortest_chain(importer=imported, imported=importer)))
        for importer in modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.startswith("orion_assets") and graph.find_shortest_chain(importer=imported, imported=importer)
    })
    assert loops == []


def test_the_method_and_the_layers_under_it_import_without_dagster() -> None:
    """Importing every module under orion_assets.method (and the layers it stands on), and under
    orion_assets.serving, loads no dagster."""
    names = [info.name for package in ("orion_assets.serving", "orion_assets.method", "orion_assets.llm",
                                       "orion_assets.store")
             for info in pkgutil.walk_packages(__import__(package, fromlist=["_"]).__path__, package + ".")]
    assert any(name.startswith("orion_assets.method.grading") for name in names)
    assert "orion_assets.serving.handover" in names
    script = ("import importlib, sys\n"
              f"for name in {names!r}:\n"
              "    importlib.import_module(name)\n"
              "    assert 'dagster' not in sys.modules, name\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_no_module_is_over_500_lines() -> None:
    sizes = {str(p.relative_to(PACKAGE_DIR)): len(p.read_text().splitlines()) for p in PACKAGE_DIR.rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}


def _function_imports(path: Path) -> list[tuple[int, int, str]]:
    """(line, first line of its function, imported module) of each import statement inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(inner.lineno, node.lineno, alias.name) for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom) and inner.level == 0:
                    found.append((inner.lineno, node.lineno, inner.module or ""))
    return sorted(set(found))


def _says_deferred(lines: list[str], lineno: int, function_line: int) -> bool:
    """A ``deferred`` comment on the import's line or on one of the few lines above it in its function."""
    above = lines[max(function_line, lineno - SAYS_SO_WITHIN) - 1 : lineno]
    return any("#" in line and "deferred" in line.split("#", 1)[1].lower() for line in above)


def test_imports_inside_functions_only_defer_heavy_libraries_and_say_so() -> None:
    """An import inside a function defers a heavy library (or Dagster, or the Dagster definitions) and a
    comment says so; every other import is at module level."""
    offending = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        lines = path.read_text().splitlines()
        for lineno, function_line, module in _function_imports(path):
            root = module if module.startswith("orion_assets") else module.split(".")[0]
            deferrable = any(root == d or module.startswith(d + ".") for d in DEFERRABLE)
            if not (deferrable and _says_deferred(lines, lineno, function_line)):
                offending.append(f"{path.relative_to(PACKAGE_DIR)}:{lineno} {module}")
    assert offending == []
