"""The shape of the code, measured: ``python -m orion_devtools.code_shape [--root DIR]``.

Prints what issue 29 asks to compare before and after a change, read from the source (AST and grimp, no import
of the package, so it runs on any checkout): the import graph between ``orion_assets``'s subpackages, the line
counts of its modules, the length of every asset function, and every module that loads a profile when it is
imported. ``--root`` measures another checkout (``git worktree add /tmp/old <rev>``).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "orion_assets"
ASSET_DECORATORS = {"orion_asset", "asset", "asset_check", "multi_asset", "blueprint"}
MAX_ASSET_LINES = 45
MAX_MODULE_LINES = 500


@dataclass(frozen=True)
class AssetFunction:
    module: str
    name: str
    lines: int  # from its ``def`` to its last line, decorators left out


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root``, by dotted name."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def line_counts(root: Path) -> dict[str, int]:
    return {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules(root).items()}


def _decorator_name(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")


def asset_functions(root: Path) -> list[AssetFunction]:
    """The functions an asset decorator declares, in ``orion_assets/assets`` (nested ones too: a factory's)."""
    found = []
    for name, path in modules(root).items():
        if not name.startswith(f"{PACKAGE}.assets"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and any(
                _decorator_name(d) in ASSET_DECORATORS for d in node.decorator_list
            ):
                found.append(AssetFunction(name, node.name, node.end_lineno - node.lineno + 1))
    return found


def profile_loads_at_import(root: Path) -> list[str]:
    """``module:line`` of each ``load_profile(...)`` call run when its module is imported: in a module-level
    statement, outside any function or class body (a decorator's argument counts: it runs at import)."""
    found = []
    for name, path in modules(root).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        pending: list[ast.AST] = list(tree.body)
        while pending:
            node = pending.pop()
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                pending += node.decorator_list + [d for d in node.args.defaults if d is not None]
                continue
            if isinstance(node, ast.ClassDef):
                pending += node.decorator_list + node.bases
                continue
            if isinstance(node, ast.Call) and _decorator_name(node) == "load_profile":
                found.append(f"{name}:{node.lineno}")
            pending += list(ast.iter_child_nodes(node))
    return sorted(found)


def subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def import_graph(root: Path) -> tuple[Counter[tuple[str, str]], Counter[str]]:
    """How many module imports go from one subpackage (or top-level module) of the package to another, and how
    many modules of each subpackage import dagster."""
    import grimp  # deferred: only this report needs it

    sys.path.insert(0, str(root))
    try:
        graph = grimp.build_graph(PACKAGE, include_external_packages=True, cache_dir=None)
    finally:
        sys.path.remove(str(root))
    edges: Counter[tuple[str, str]] = Counter()
    dagster: Counter[str] = Counter()
    for importer in (m for m in graph.modules if m.split(".")[0] == PACKAGE):
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported.split(".")[0] == "dagster":
                dagster[subpackage(importer)] += 1
            elif imported.split(".")[0] == PACKAGE and (a := subpackage(importer)) != (b := subpackage(imported)):
                edges[(a, b)] += 1
    return edges, dagster


def report(root: Path) -> str:
    counts = line_counts(root)
    assets = asset_functions(root)
    loads = profile_loads_at_import(root)
    over = sorted((n, c) for n, c in counts.items() if c > MAX_MODULE_LINES)
    readme = len((root / "README.md").read_text(encoding="utf-8").splitlines())
    names = Counter(m.rsplit(".", 1)[-1] for m, path in modules(root).items() if path.name != "__init__.py")
    lines = [f"# code shape of {root}", "", "## modules",
             f"{len(counts)} modules, {sum(counts.values())} lines; largest {max(counts.values())}; "
             f"over {MAX_MODULE_LINES}: {', '.join(f'{n} ({c})' for n, c in over) or 'none'}; README.md {readme} lines",
             "names used by more than one module: "
             + (", ".join(f"{n}.py ({c})" for n, c in sorted(names.items()) if c > 1) or "none"), "",
             "## asset functions (lines from def to end)"]
    lines += [f"{a.lines:4d}  {a.module}.{a.name}" + ("  OVER" if a.lines > MAX_ASSET_LINES else "")
              for a in sorted(assets, key=lambda a: -a.lines)]
    lines += ["", f"over {MAX_ASSET_LINES}: {sum(a.lines > MAX_ASSET_LINES for a in assets)} of {len(assets)}", "",
              "## profile loaded at import", *(loads or ["none"]), "", "## import graph (imports between subpackages)"]
    short = {f"{PACKAGE}.{name}": name for name in {subpackage(m).split(".")[-1] for m in counts}}
    edges, dagster = import_graph(root)
    lines += [f"{n:4d}  {short.get(a, a)} -> {short.get(b, b)}" for (a, b), n in sorted(edges.items())]
    lines += ["", "## modules importing dagster, by subpackage",
              *(f"{n:4d}  {short.get(a, a)}" for a, n in sorted(dagster.items()))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout to measure (default: this one)")
    args = parser.parse_args(argv)
    print(report(args.root.resolve()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
