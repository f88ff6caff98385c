"""The modules of ``orion_assets.llm`` import each other without a cycle (lazy imports inside
functions included): the base class never imports the backends that subclass it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import orion_assets.llm as llm

LLM_DIR = Path(llm.__file__).parent
PACKAGE = "orion_assets.llm"


def _imports(path: Path) -> set[str]:
    """The ``orion_assets.llm`` modules a file imports anywhere in it (top level or in a function)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.removeprefix(f"{PACKAGE}.") for n in names if n.startswith(f"{PACKAGE}.")}
    modules = {p.stem for p in LLM_DIR.glob("*.py")}
    return {n for n in found if n in modules}


def test_the_llm_modules_import_each_other_without_a_cycle() -> None:
    graph = {p.stem: _imports(p) for p in LLM_DIR.glob("*.py") if p.stem != "__init__"}
    assert "openai_backend" in graph["factory"] and "endpoint" in graph["openai_backend"]
    assert not graph["endpoint"] & {"openai_backend", "hf_backend", "replay_backend", "factory"}

    def cycle_from(start: str, node: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return (*path, nxt)
            if nxt not in path:
                found = cycle_from(start, nxt, (*path, nxt))
                if found:
                    return found
        return None

    cycles = [c for m in graph if (c := cycle_from(m, m, (m,)))]
    assert not cycles, f"import cycles in {PACKAGE}: {cycles}"


def test_make_endpoint_is_importable_from_the_package_and_loads_backends_lazily() -> None:
    code = (
        "import sys\n"
        "from orion_assets.llm import make_endpoint\n"
        "from orion_assets.llm.factory import make_endpoint as direct\n"
        "assert make_endpoint is direct\n"
        "assert not {'orion_assets.llm.openai_backend', 'orion_assets.llm.hf_backend'} & set(sys.modules)\n"
        "import orion_assets.llm.openai_backend\n"  # a backend imported first still finds its base class
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
