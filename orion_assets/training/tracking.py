"""Experiment tracking ([tracking], docs/tracking.md): one tracker run per checkpoint (student, variant, seed).

The SFT process logs its curves into that run through TRL's ``report_to`` (:func:`open_checkpoint_run` gives
the list and the environment the tracker's callback reads), and each evaluation logs its scores into the same
run. The run is tagged with the profile, the checkpoint and the Dagster run ids, so the two point at each
other. No Dagster here: the assets pass the ids in (``orion.tracker``, :meth:`CheckpointIdentity.of`), and
``orion_assets.io.metadata.tracking_metadata`` turns a :class:`TrackedRun` into materialization metadata. The
profile's ``[tracking]`` section itself stays with the other sections, in ``orion_assets/profiles/tracking.py``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orion_assets.profiles import Profile
from orion_assets.profiles.tracking import TrackingSection
from orion_assets.store.lock import LOCK_TIMEOUT_S, file_lock

TAG_PREFIX = "orion."
DAGSTER_RUN_TAG = "dagster.run_id"  # the Dagster run that trained the checkpoint (the latest one)
EVAL_RUN_TAG = "dagster.eval_run_id"  # + ".<benchmark>": the Dagster run that scored it on that benchmark
SQLITE_PREFIX = "sqlite:///"


@dataclass(frozen=True)
class Tracker:
    """Where the runs go: the [tracking] section resolved against the data folder and the profile's name."""

    backend: str
    experiment: str
    root: Path  # $ORION_DATA_DIR
    tracking_uri: str | None = None  # mlflow
    ui_url: str | None = None

    @classmethod
    def of(cls, section: TrackingSection, data_dir: Path, profile_name: str) -> Tracker:
        uri = section.tracking_uri
        if section.backend == "mlflow" and uri is None:
            uri = f"{SQLITE_PREFIX}{(Path(data_dir) / 'mlflow' / 'mlflow.db').resolve()}"
        return cls(backend=section.backend, experiment=section.experiment or Path(profile_name).stem,
                   root=Path(data_dir), tracking_uri=uri, ui_url=section.ui_url)

    @property
    def enabled(self) -> bool:
        return self.backend != "none"


@dataclass(frozen=True)
class CheckpointIdentity:
    """What names one checkpoint's run; its tags."""

    profile: str
    profile_hash: str
    student: str
    variant: str
    seed: int
    checkpoint_id: str
    config_hash: str | None = None

    @classmethod
    def of(cls, profile: Profile, student: str, variant: str, seed: int, checkpoint_id: str,
           config_hash: str | None = None) -> CheckpointIdentity:
        """The identity of one checkpoint of ``profile`` (its name and hash)."""
        return cls(profile=profile.name, profile_hash=profile.hash, student=student, variant=variant, seed=seed,
                   checkpoint_id=checkpoint_id, config_hash=config_hash)

    @property
    def run_name(self) -> str:
        return f"{self.student}/{self.variant}/seed{self.seed}"

    @property
    def key(self) -> str:
        """The run's own id where the tracker takes one: every seed of ``base`` shares its checkpoint."""
        return f"{self.checkpoint_id}-seed{self.seed}"

    def tags(self) -> dict[str, str]:
        values = {"profile": self.profile, "profile_hash": self.profile_hash, "student": self.student,
                  "variant": self.variant, "seed": str(self.seed), "checkpoint_id": self.checkpoint_id,
                  "config_hash": self.config_hash}
        return {TAG_PREFIX + key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class TrackedRun:
    """A checkpoint's run: its id, how to open it (``link``: a URL, or the command that serves it), and what
    the SFT process needs to log into it (``report_to`` for TRL, ``env`` for the tracker's callback)."""

    backend: str
    run_id: str
    link: str
    report_to: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def link_is_url(self) -> bool:
        return self.link.startswith(("http://", "https://"))


def open_checkpoint_run(tracker: Tracker, ident: CheckpointIdentity, dagster_run_id: str,
                        run_tag: str = DAGSTER_RUN_TAG) -> TrackedRun | None:
    """The checkpoint's run (found by its ``orion.checkpoint_id`` tag, created when missing), tagged with the
    identity and ``run_tag`` = ``dagster_run_id``; None when [tracking] backend = "none"."""
    if tracker.backend == "mlflow":
        return _mlflow_run(tracker, ident, {run_tag: dagster_run_id})
    if tracker.backend == "tensorboard":
        logdir = _tensorboard_dir(tracker, ident)
        _write_tags(logdir, {**ident.tags(), run_tag: dagster_run_id})
        return TrackedRun("tensorboard", ident.key, f"tensorboard --logdir {logdir}", ["tensorboard"],
                          {"TENSORBOARD_LOGGING_DIR": str(logdir)})
    if tracker.backend == "wandb":
        env = _wandb_env(tracker, ident)
        _write_tags(Path(env["WANDB_DIR"]) / ident.key, {**ident.tags(), run_tag: dagster_run_id})
        link = f"W&B project {env['WANDB_PROJECT']}, run {ident.key} (offline runs: wandb sync {env['WANDB_DIR']}/wandb)"
        return TrackedRun("wandb", ident.key, link, ["wandb"], env)
    return None


def log_scores(tracker: Tracker, ident: CheckpointIdentity, benchmark: str,
               by_rule: Mapping[str, Mapping[str, Any]], dagster_run_id: str) -> TrackedRun | None:
    """Log one benchmark's scores (``{grading rule: {pass_at_1: ..., pass_at_1_se: ..., ...}}``) into the
    checkpoint's run as ``<benchmark>/<rule>/<score>``, tagged ``dagster.eval_run_id.<benchmark>``."""
    run = open_checkpoint_run(tracker, ident, dagster_run_id, run_tag=f"{EVAL_RUN_TAG}.{benchmark}")
    if run is None:
        return None
    metrics = {f"{benchmark}/{rule}/{name}": float(value) for rule, scores in by_rule.items()
               for name, value in scores.items() if isinstance(value, int | float) and not isinstance(value, bool)}
    if tracker.backend == "mlflow":
        _mlflow_log(tracker, run.run_id, metrics)
    elif tracker.backend == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter  # deferred: heavy; needs the tensorboard package

        with SummaryWriter(log_dir=run.env["TENSORBOARD_LOGGING_DIR"]) as writer:
            for key, value in metrics.items():
                writer.add_scalar(key, value, 0)
    else:
        import wandb  # deferred: optional, and heavy

        with wandb.init(id=ident.key, resume="allow", project=run.env["WANDB_PROJECT"],
                        dir=run.env["WANDB_DIR"], mode=run.env["WANDB_MODE"]) as live:
            live.summary.update(metrics)
    return run


# -- mlflow


@contextmanager
def _store_lock(tracker: Tracker) -> Iterator[None]:
    """A local SQLite store is written by several processes (Dagster's steps, the SFT process): its first-time
    migrations and each find-or-create run under the project's cross-process lock."""
    uri = tracker.tracking_uri or ""
    if not uri.startswith(SQLITE_PREFIX):  # a server: it serializes its own writes
        yield
        return
    database = Path(uri.removeprefix(SQLITE_PREFIX).split("?", 1)[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(database.with_name(database.name + ".lock"), exclusive=True, timeout_s=LOCK_TIMEOUT_S):
        yield


def _mlflow() -> Any:
    import mlflow  # deferred: heavy (~2.5 s), and only a profile that tracks with it pays for it

    return mlflow


def _mlflow_client(tracker: Tracker) -> Any:
    return _mlflow().MlflowClient(tracking_uri=tracker.tracking_uri)


def _mlflow_experiment(client: Any, tracker: Tracker) -> str:
    found = client.get_experiment_by_name(tracker.experiment)
    if found is not None:
        return found.experiment_id
    local = (tracker.tracking_uri or "").startswith(SQLITE_PREFIX)
    artifacts = (tracker.root / "mlflow" / "artifacts").resolve().as_uri() if local else None  # not ./mlruns
    try:
        return client.create_experiment(tracker.experiment, artifact_location=artifacts)
    except _mlflow().exceptions.MlflowException:  # a server's other client created it first
        return client.get_experiment_by_name(tracker.experiment).experiment_id


def _mlflow_run(tracker: Tracker, ident: CheckpointIdentity, extra_tags: Mapping[str, str]) -> TrackedRun:
    RunTag = _mlflow().entities.RunTag
    tags = {**ident.tags(), **extra_tags}
    with _store_lock(tracker):
        client = _mlflow_client(tracker)
        experiment_id = _mlflow_experiment(client, tracker)
        found = client.search_runs([experiment_id], f"tags.`{TAG_PREFIX}checkpoint_id` = '{ident.checkpoint_id}' "
                                   f"and tags.`{TAG_PREFIX}seed` = '{ident.seed}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        else:
            run_id = client.create_run(experiment_id, tags=tags, run_name=ident.run_name).info.run_id
            client.set_terminated(run_id)  # the SFT process resumes it while it trains
    path = f"#/experiments/{experiment_id}/runs/{run_id}"
    link = (f"{tracker.ui_url.rstrip('/')}/{path}" if tracker.ui_url
            else f"mlflow ui --backend-store-uri {tracker.tracking_uri}, then open {path}")
    env = {"MLFLOW_TRACKING_URI": tracker.tracking_uri, "MLFLOW_EXPERIMENT_NAME": tracker.experiment,
           "MLFLOW_RUN_ID": run_id}
    return TrackedRun("mlflow", run_id, link, ["mlflow"], env)


def _mlflow_log(tracker: Tracker, run_id: str, metrics: Mapping[str, float]) -> None:
    Metric = _mlflow().entities.Metric
    now = int(time.time() * 1000)
    with _store_lock(tracker):
        _mlflow_client(tracker).log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])


# -- tensorboard and wandb (files under $ORION_DATA_DIR)


def _tensorboard_dir(tracker: Tracker, ident: CheckpointIdentity) -> Path:
    return (tracker.root / "tensorboard" / tracker.experiment / ident.student / ident.variant / f"seed{ident.seed}"
            / ident.checkpoint_id).resolve()


def _wandb_env(tracker: Tracker, ident: CheckpointIdentity) -> dict[str, str]:
    """What transformers' WandbCallback and ``wandb.init`` read: offline unless WANDB_MODE is set, and the run
    named by the checkpoint id, so that the evaluation resumes it."""
    directory = (tracker.root / "wandb").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return {"WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_DIR": str(directory),
            "WANDB_PROJECT": tracker.experiment, "WANDB_RUN_ID": ident.key, "WANDB_RESUME": "allow",
            "WANDB_NAME": ident.run_name}


def _write_tags(directory: Path, tags: Mapping[str, str]) -> None:
    """The run's tags beside its files (these trackers have no key-value tags); the latest value of each."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "orion_tags.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    path.write_text(json.dumps({**old, **tags}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
