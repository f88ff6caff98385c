"""The profile's [sft.k8s] table: the ``dagster-k8s/config`` tag of the ``student_checkpoint`` asset (the SFT
step's pod: GPU resources, node selector, tolerations), so a cluster needs a profile, not a code edit.

The keys are those dagster-k8s accepts in that tag (``USER_DEFINED_K8S_JOB_CONFIG_SCHEMA`` in
dagster-io/dagster python_modules/libraries/dagster-k8s/dagster_k8s/job.py); each value is the Kubernetes
object's fields, snake_case or camelCase, passed on as written.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from orion_assets.profiles.section import Section

#: The tag dagster-k8s reads (an op's or asset's tags for ``k8s_job_executor``, a run's for ``K8sRunLauncher``).
K8S_CONFIG_TAG = "dagster-k8s/config"

_PLAIN = (str, int, float, bool)


def _first_non_json(value: Any, where: str) -> str | None:
    """Where in ``value`` something sits that a JSON tag cannot hold (a TOML date or time), else None."""
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_non_json(item, f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_non_json(item, f"{where}[{i}]")
            if found:
                return found
        return None
    if value is None or isinstance(value, _PLAIN):
        return None
    kind = "a date or time" if isinstance(value, datetime.date | datetime.time) else type(value).__name__
    return f"{where} is {kind}"


class K8sConfig(Section):
    """[sft.k8s]: the ``dagster-k8s/config`` dict; a key left out is not sent (the deployment's defaults hold).

    Example (one GPU node of a pool, tainted for GPU work)::

        [sft.k8s.container_config.resources]
        limits = { "nvidia.com/gpu" = 1, memory = "64Gi" }
        [sft.k8s.pod_spec_config]
        node_selector = { "cloud.google.com/gke-accelerator" = "nvidia-h100-80gb" }
        tolerations = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
    """

    container_config: dict[str, Any] | None = None  # the pod's main container (V1Container): resources, env, ...
    pod_spec_config: dict[str, Any] | None = None  # the pod's spec (V1PodSpec): node_selector, tolerations, ...
    pod_template_spec_metadata: dict[str, Any] | None = None  # the pod's metadata: labels, annotations
    job_config: dict[str, Any] | None = None  # the Kubernetes Job (V1Job)
    job_metadata: dict[str, Any] | None = None  # the Job's metadata
    job_spec_config: dict[str, Any] | None = None  # the Job's spec (V1JobSpec): backoff_limit, ...
    merge_behavior: Literal["DEEP", "SHALLOW"] | None = None  # with the deployment's config; dagster-k8s: DEEP

    @field_validator(
        "container_config", "pod_spec_config", "pod_template_spec_metadata", "job_config", "job_metadata",
        "job_spec_config",
    )
    @classmethod
    def _json_only(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        found = _first_non_json(value, info.field_name) if value is not None else None
        if found:
            raise PydanticCustomError(
                "k8s_not_json", "{found}: a dagster-k8s/config tag is JSON; write it as a string", {"found": found}
            )
        return value

    def tag_value(self) -> dict[str, Any]:
        """The tag's value: the keys set here."""
        return self.model_dump(mode="json", exclude_none=True)


def sft_op_tags(k8s: K8sConfig | None) -> dict[str, Any]:
    """The ``student_checkpoint`` asset's op tags from [sft.k8s]: ``{"dagster-k8s/config": {...}}``, or none."""
    if k8s is None or not k8s.tag_value():
        return {}
    return {K8S_CONFIG_TAG: k8s.tag_value()}
