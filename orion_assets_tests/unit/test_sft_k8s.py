"""[sft.k8s]: the student_checkpoint asset's ``dagster-k8s/config`` op tag comes from the profile the definitions
are built for (``ORION_PROFILE`` when dagster loads them); a value dagster-k8s could not take is refused naming
the key."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orion_assets.profiles import ProfileError, load_profile
from orion_assets.profiles.k8s import K8S_CONFIG_TAG, sft_op_tags
from orion_assets.training import TrainParams, config_hash

REPO = Path(__file__).resolve().parents[2]

GPU_POOL = """
[sft.k8s]
merge_behavior = "SHALLOW"
[sft.k8s.container_config.resources]
limits = { "nvidia.com/gpu" = 8, memory = "512Gi" }
requests = { cpu = "32" }
[sft.k8s.pod_spec_config]
node_selector = { "cloud.google.com/gke-accelerator" = "nvidia-h100-80gb" }
tolerations = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
"""

EXPECTED = {
    "merge_behavior": "SHALLOW",
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": 8, "memory": "512Gi"}, "requests": {"cpu": "32"}}},
    "pod_spec_config": {
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


@pytest.mark.slow  # dagster's code location loaded in a subprocess: about 6 s
def test_the_profile_tags_reach_the_student_checkpoint_asset_when_the_definitions_load(write_profile, tmp_path):
    profile = write_profile(GPU_POOL)
    assert sft_op_tags(load_profile(str(profile)).config.sft.k8s) == {K8S_CONFIG_TAG: EXPECTED}
    code = (
        "import json\n"
        "from orion_assets.definitions import defs\n"
        "tags = {key: defs().resolve_assets_def(key).op.tags for key in ('student_checkpoint', 'sft_dataset')}\n"
        "print(json.dumps(tags))\n"
    )
    env = {**os.environ, "ORION_PROFILE": str(profile), "ORION_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    tags = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads(tags["student_checkpoint"][K8S_CONFIG_TAG]) == EXPECTED  # Dagster keeps it as JSON text
    assert K8S_CONFIG_TAG not in tags["sft_dataset"]  # only the SFT step needs the GPU node


def test_without_the_table_there_is_no_tag_and_the_table_leaves_the_training_hash(write_profile, tmp_path):
    assert sft_op_tags(load_profile("tiny").config.sft.k8s) == {}
    assert sft_op_tags(load_profile(str(write_profile("[sft.k8s]\n", name="empty.toml"))).config.sft.k8s) == {}
    # where the process runs is not what it trains: same run directory with or without the table
    sfts = [load_profile("tiny").config.sft, load_profile(str(write_profile(GPU_POOL))).config.sft]
    data = tmp_path / "sft.parquet"
    hashes = {config_hash(TrainParams.from_sft_config(sft, base_model_path="m", dataset_path=data, output_dir="-",
                                                      base_model_hash="b"))
              for sft in sfts}
    assert len(hashes) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[sft.k8s]\npod_spec_config = "gpu-pool"\n',
         "'sft.k8s.pod_spec_config': Input should be a valid dictionary (got 'gpu-pool')"),
        ('[sft.k8s.pod_spec]\nnode_selector = { pool = "gpu" }\n',
         "unknown key 'sft.k8s.pod_spec' (did you mean 'pod_spec_config'?)"),
        ('[sft.k8s]\nmerge_behavior = "deep"\n',
         "unknown value 'deep' for 'sft.k8s.merge_behavior' (expected 'DEEP' or 'SHALLOW')"),
        ("[sft.k8s.job_metadata.annotations]\nsince = 2024-01-01\n",
         "job_metadata.annotations.since is a date or time: a dagster-k8s/config tag is JSON; write it as a string"),
    ],
)
def test_a_bad_tag_value_is_refused_naming_the_key(write_profile, body, message):
    with pytest.raises(ProfileError) as refused:
        load_profile(str(write_profile(body)))
    assert message in str(refused.value)
