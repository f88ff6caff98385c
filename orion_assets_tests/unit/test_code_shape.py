"""The shape issue 29 asks for, measured by ``orion_devtools.code_shape`` (which the closing note runs before and
after): no module loads a profile when imported, and no asset function is over 45 lines."""

from __future__ import annotations

import textwrap
from pathlib import Path

from orion_devtools import code_shape

REPO = Path(__file__).resolve().parents[2]


def test_no_module_loads_a_profile_when_imported() -> None:
    assert code_shape.profile_loads_at_import(REPO) == []


def test_no_asset_function_is_over_45_lines() -> None:
    assets = code_shape.asset_functions(REPO)
    assert len(assets) >= 16
    assert [a for a in assets if a.lines > code_shape.MAX_ASSET_LINES] == []


def test_the_measures_find_what_they_look_for(tmp_path: Path) -> None:
    """A module-level ``load_profile()`` (also in a decorator's argument) is found and one inside a function is
    not; an asset function's length runs from its ``def`` to its last line."""
    package = tmp_path / "orion_assets" / "assets"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(textwrap.dedent("""
        from orion_assets.profiles import load_profile
        TAGS = tags(load_profile().config)

        @orion_asset(SPEC, op_tags=of(load_profile()))
        def big(context):
            x = 1
            return x

        def later():
            return load_profile()
    """))
    assert code_shape.profile_loads_at_import(tmp_path) == ["orion_assets.assets.a:3", "orion_assets.assets.a:5"]
    assert code_shape.asset_functions(tmp_path) == [code_shape.AssetFunction("orion_assets.assets.a", "big", 3)]
