"""The checks of ``orion check``, by concern; :func:`orion_assets.cli.check.run_preflight` runs them (docs/preflight.md)."""
