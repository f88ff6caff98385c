"""The profile's ``[tracking]`` section: which experiment tracker SFT curves and evaluation scores reach.

Only the settings, kept here beside the profile's other sections (``sft.py``, ``k8s.py``, ``upkeep.py``); the
tracking itself is done in one module, ``orion_assets/training/tracking.py`` (docs/tracking.md)."""

from __future__ import annotations

import importlib.util
import re
from typing import Literal

from pydantic import field_validator, model_validator
from pydantic_core import PydanticCustomError

from orion_assets.profiles.section import Section

TrackingBackend = Literal["mlflow", "tensorboard", "wandb", "none"]

#: The importable packages each backend needs (any one of them), and how to install it; mlflow is a dependency.
BACKEND_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard",), "pip install tensorboard"),
    "wandb": (("wandb",), "pip install wandb"),
}


class TrackingSection(Section):
    """Where SFT curves (through TRL's ``report_to``) and evaluation scores are logged, one tracker run per
    checkpoint. ``mlflow`` (the default) writes a local SQLite store under ``$ORION_DATA_DIR/mlflow`` unless
    ``tracking_uri`` names another store or a server, so it needs no server; ``tensorboard`` writes event files
    under ``$ORION_DATA_DIR/tensorboard``; ``wandb`` runs offline (under ``$ORION_DATA_DIR/wandb``) unless
    ``WANDB_MODE`` is set. Credentials only come from the environment (``MLFLOW_TRACKING_TOKEN``,
    ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``, ``WANDB_API_KEY``). Not part of the profile hash: tracking
    changes no result."""

    backend: TrackingBackend = "mlflow"
    # mlflow only: a tracking URI (sqlite:///path/mlflow.db, http://host:5000, databricks); None: the local
    # store sqlite:///$ORION_DATA_DIR/mlflow/mlflow.db
    tracking_uri: str | None = None
    # The experiment (mlflow) or project (wandb) runs go to; None: the profile's name (a file's stem).
    experiment: str | None = None
    # mlflow only: the UI's address (e.g. http://localhost:5000), for a link to each run in the asset metadata;
    # None: the metadata give the `mlflow ui` command that serves the store instead.
    ui_url: str | None = None

    @field_validator("tracking_uri")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value is not None and re.search(r"//[^/@\s]*:[^/@\s]*@", value):
            # a custom error type: the profile loader names the key, and never echoes the value
            raise PydanticCustomError(
                "secret_in_setting",
                "the tracking URI holds a password: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "(or MLFLOW_TRACKING_TOKEN) in the environment instead",
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrackingSection:
        if self.backend != "mlflow":
            given = [key for key in ("tracking_uri", "ui_url") if getattr(self, key) is not None]
            if given:
                raise ValueError(f'[tracking] {", ".join(given)} only apply to backend = "mlflow"')
        if self.backend in BACKEND_PACKAGES:
            modules, install = BACKEND_PACKAGES[self.backend]
            if not any(importlib.util.find_spec(m) is not None for m in modules):
                raise ValueError(f'[tracking] backend = "{self.backend}" needs the {modules[0]} package, which is not '
                                 f'installed here ({install}), or choose "mlflow" (installed) or "none"')
        return self
