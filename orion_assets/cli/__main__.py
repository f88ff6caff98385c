"""``python -m orion_assets.cli``: the ``orion`` command."""

import sys

from orion_assets.cli.main import main

sys.exit(main())
