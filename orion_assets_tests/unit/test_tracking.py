"""[tracking]: the profile section, what reaches TRL (and what stays out of the config hash), and several
processes writing one fresh local MLflow store at once. The SFT-and-evaluation test is in e2e/test_tracking.py."""

import importlib.util
import multiprocessing
from pathlib import Path

import pytest

from orion_assets.profiles import ProfileError, load_profile
from orion_assets.profiles.tracking import TrackingSection
from orion_assets.training.config import TrainParams, config_hash
from orion_assets.training.tracking import CheckpointIdentity, Tracker, log_scores, open_checkpoint_run


def test_the_section_defaults_to_a_local_mlflow_store_and_refuses_what_cannot_work(write_profile, tmp_path):
    default = load_profile(str(write_profile("[tracking]\nbackend = \"mlflow\"\n"))).config.tracking
    assert (default.backend, default.tracking_uri, default.experiment, default.ui_url) == ("mlflow", None, None, None)
    assert load_profile("tiny").config.tracking.backend == "none"  # the smoke profile logs nowhere
    tracker = Tracker.of(default, tmp_path / "data", str(tmp_path / "my_profile.toml"))
    assert tracker.tracking_uri == f"sqlite:///{(tmp_path / 'data' / 'mlflow' / 'mlflow.db').resolve()}"
    assert tracker.experiment == "my_profile"

    with pytest.raises(ProfileError, match=r"unknown key 'tracking.tracking_url' \(did you mean 'tracking_uri'\?\)"):
        load_profile(str(write_profile('[tracking]\ntracking_url = "sqlite:///x.db"\n')))
    with pytest.raises(ProfileError, match=r"unknown value 'neptune' for 'tracking.backend'"):
        load_profile(str(write_profile('[tracking]\nbackend = "neptune"\n')))
    with pytest.raises(ProfileError, match=r'tracking_uri only apply to backend = "mlflow"'):
        load_profile(str(write_profile('[tracking]\nbackend = "none"\ntracking_uri = "http://localhost:5000"\n')))
    for backend in ("mlflow", "none"):  # refused before anything that would show the section's values
        with pytest.raises(ProfileError, match="'tracking.tracking_uri': the tracking URI holds a password: set "
                                               "MLFLOW_TRACKING_USERNAME") as refused:
            load_profile(str(write_profile(f'[tracking]\nbackend = "{backend}"\n'
                                           'tracking_uri = "http://me:hunter2@mlflow.example:5000"\n')))
        assert "hunter2" not in str(refused.value)
    with pytest.raises(ProfileError, match=r"'sft.training_args.report_to' cannot be set here: set \[tracking\] backend"):
        load_profile(str(write_profile('[sft.training_args]\nreport_to = ["mlflow"]\n')))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed here")
def test_tensorboard_is_refused_at_profile_load_when_it_is_not_installed(write_profile):
    with pytest.raises(ProfileError, match=r'backend = "tensorboard" needs the tensorboard package, which is not '
                                           r"installed here \(pip install tensorboard\)"):
        load_profile(str(write_profile('[tracking]\nbackend = "tensorboard"\n')))


def test_tracking_changes_neither_the_config_hash_nor_the_profile_hash(tmp_path, write_profile):
    """(That report_to reaches TRL, e2e/test_tracking.py shows: the curves arrive.)"""
    params = TrainParams(base_model_path=str(tmp_path / "base"), dataset_path=str(tmp_path / "sft.parquet"),
                         output_dir=str(tmp_path / "out"), base_model_hash="base-0")
    assert config_hash(params.model_copy(update={"report_to": ["mlflow"]})) == config_hash(params)
    assert config_hash(params.model_copy(update={"learning_rate": 1e-5})) != config_hash(params)
    plain = load_profile(str(write_profile("", name="plain.toml")))
    logged = load_profile(str(write_profile('[tracking]\nbackend = "mlflow"\nexperiment = "x"\n', name="logged.toml")))
    assert logged.hash == plain.hash


def test_a_checkpoint_is_identified_by_the_active_profile_s_name_and_hash(write_profile):
    profile = load_profile(str(write_profile('[tracking]\nbackend = "none"\n', name="named.toml")))
    ident = CheckpointIdentity.of(profile, "tiny", "orion", 2, "checkpoint-0", "config-0")
    assert ident == CheckpointIdentity(profile.name, profile.hash, "tiny", "orion", 2, "checkpoint-0", "config-0")
    assert ident.tags()["orion.profile_hash"] == profile.hash and ident.key == "checkpoint-0-seed2"


def _score_in_process(args: tuple[str, int]) -> str:
    """One Dagster step's worth of tracking in its own process: open the checkpoint's run, log a score."""
    root, index = args
    tracker = Tracker.of(TrackingSection(), Path(root), "tiny")
    ident = CheckpointIdentity("tiny", "hash-0", "tiny", "orion", 0, "checkpoint-0")
    run = log_scores(tracker, ident, f"bench{index}", {"strict": {"pass_at_1": index / 10, "k": 1}}, f"dagster-{index}")
    return run.run_id


@pytest.mark.slow  # about 10 s: each process imports MLflow
def test_concurrent_steps_share_one_fresh_local_store_and_one_run_per_checkpoint(tmp_path):
    """Several processes create the store (its first-time migrations), the experiment and the checkpoint's run at
    once: one run, every score in it."""
    n = 2
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        run_ids = pool.map(_score_in_process, [(str(tmp_path), i) for i in range(n)])
    assert len(set(run_ids)) == 1
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=Tracker.of(TrackingSection(), tmp_path, "tiny").tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert {k: v for k, v in run.data.metrics.items() if k.endswith("pass_at_1")} == {
        f"bench{i}/strict/pass_at_1": i / 10 for i in range(n)}
    assert {run.data.tags[f"dagster.eval_run_id.bench{i}"] for i in range(n)} == {f"dagster-{i}" for i in range(n)}
    assert open_checkpoint_run(Tracker.of(TrackingSection(), tmp_path, "tiny"), CheckpointIdentity(
        "tiny", "hash-0", "tiny", "orion", 1, "checkpoint-0"), "dagster-x").run_id != run.info.run_id  # another seed
