from pathlib import Path

import pytest

from orion_assets.profiles import ProfileError, load_profile, shipped_profiles


def test_shipped_profiles_load_and_differ():
    assert {"tiny", "paper"} <= set(shipped_profiles())
    tiny, paper = load_profile("tiny"), load_profile("paper")
    assert tiny.config.endpoints.teacher.backend == "replay"
    assert paper.config.endpoints.teacher.backend == "openai"
    assert paper.config.eval.k_overrides == {"aime24": 16, "amc23": 16}
    assert (paper.config.eval.compat, paper.config.eval.also_grade) == ("strict", ["qwen_math"])
    assert (tiny.config.eval.compat, tiny.config.eval.also_grade) == ("strict", [])
    assert tiny.hash != paper.hash


def test_default_comes_from_environment(monkeypatch, write_profile):
    monkeypatch.delenv("ORION_PROFILE", raising=False)
    default = load_profile()
    assert default.name == "arithmetic" and default.config.data.benchmarks == ["arithmetic"]
    assert default.config.student_model.source == "gguf"  # a real model learns: SmolLM2, not the random tiny one
    path = write_profile("[data]\ntrain_limit = 5\n")
    monkeypatch.setenv("ORION_PROFILE", str(path))
    assert load_profile().config.data.train_limit == 5


def test_extends_merges_tables_and_overrides_keys(write_profile):
    path = write_profile(
        """
        [data]
        train_limit = 3
        [endpoints.teacher]
        backend = "openai"
        base_url = "http://127.0.0.1:9/v1"
        model = "r1"
        """
    )
    profile = load_profile(str(path))
    tiny = load_profile("tiny")
    assert profile.config.data.train_limit == 3
    # keys not overridden come from the parent, table by table
    assert profile.config.data.benchmark_limit == tiny.config.data.benchmark_limit
    assert profile.config.endpoints.teacher.model == "r1"
    assert profile.config.endpoints.student == tiny.config.endpoints.student
    assert profile.hash != tiny.hash


def test_extends_a_relative_path_chain(write_profile, tmp_path: Path):
    write_profile("[eval]\nk = 7\n", name="base.toml", extends="paper")
    child = write_profile("[data]\ntrain_limit = 2\n", name="child.toml", extends="base.toml")
    profile = load_profile(str(child))
    assert profile.config.eval.k == 7
    assert profile.config.data.train_limit == 2
    assert profile.config.endpoints.teacher.backend == "openai"  # from paper, two levels up


@pytest.mark.parametrize(
    "body, named",
    [
        ("[data]\ntrain_limt = 3\n", "data.train_limt"),
        ("[sft]\nlearning_rat = 1.0\n", "sft.learning_rat"),
        ("[sft]\nepochs = 3\n", "set 'sft.num_train_epochs'"),
        ("[sft]\nbatch_size = 2\n", "set 'sft.per_device_train_batch_size'"),
        ('[eval]\ngsm_hard_rule = "math_equal"\n', "set [eval] compat"),
        ('[eval]\ncompat = "qwen"\n', "did you mean 'qwen_math'"),
        ('[eval]\nalso_grade = ["strict"]\n', "names a rule twice"),
        ("[sft.training_args]\nwarmup_ratio = 0.1\n", "sft.training_args.warmup_ratio"),
        ("[sft.training_args]\nlr_sheduler_type = 'cosine'\n", "did you mean 'lr_scheduler_type'"),
        ("[sft.training_args]\nmax_length = 1024\n", "sft.training_args.max_length"),
        ("[sft.training_args]\nnum_train_epochs = 3\n", "set [sft] num_train_epochs"),
        ("[sft.training_args]\noutput_dir = '/tmp/x'\n", "sft.training_args.output_dir"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ('[endpoints.teacher]\nbackend = "vllm"\n', "'vllm'"),
        ('[endpoints.critic]\nbackend = "openai"\n', "endpoints.critic"),
        ('[data]\nbenchmarks = ["math500", "gsm8k_platinum"]\n', "'gsm8k_platinum'"),
        ("[eval]\nk_overrides = { aime25 = 4 }\n", "aime25"),
        ('[reflection]\non_failure = "retry"\n', "'retry'"),
    ],
)
def test_unknown_keys_backends_and_benchmarks_are_refused_by_name(write_profile, body, named):
    path = write_profile(body)
    with pytest.raises(ProfileError) as excinfo:
        load_profile(str(path))
    message = str(excinfo.value)
    assert named in message
    assert str(path) in message


def test_bad_values_missing_files_and_cycles(write_profile, tmp_path: Path):
    with pytest.raises(ProfileError, match="train_limit"):
        load_profile(str(write_profile("[data]\ntrain_limit = -1\n")))
    with pytest.raises(ProfileError, match="not found"):
        load_profile(str(tmp_path / "missing.toml"))
    with pytest.raises(ProfileError, match="invalid TOML"):
        load_profile(str(write_profile("[data\n")))
    write_profile("", name="a.toml", extends="b.toml")
    write_profile("", name="b.toml", extends="a.toml")
    with pytest.raises(ProfileError, match="extends itself"):
        load_profile(str(tmp_path / "a.toml"))
    with pytest.raises(ProfileError, match="exactly one of 'path' or 'hf_dataset'"):
        load_profile(str(write_profile('[[data.train_sources]]\nname = "x"\n')))


def test_quality_max_tokens_must_leave_room_for_the_prompt_in_sft_max_length(write_profile):
    from orion_assets.profiles.schema import PROMPT_TOKEN_MARGIN, OrionConfig

    # A CoT as long as the whole SFT sequence leaves no room for the prompt: refused, naming both keys.
    path = write_profile("[quality]\nmax_tokens = 2048\n[sft]\nmax_length = 2048\n")
    with pytest.raises(ProfileError) as excinfo:
        load_profile(str(path))
    message = str(excinfo.value)
    assert "[quality] max_tokens = 2048" in message and "[sft] max_length = 2048" in message
    assert str(path) in message
    assert "Value error" not in message and "(got {" not in message  # the rule's own sentence, not pydantic's dump
    # Lowering the sequence length in a child profile trips it too.
    with pytest.raises(ProfileError, match="max_length = 1024"):
        load_profile(str(write_profile("[sft]\nmax_length = 1024\n", name="short.toml")))
    # The margin is the bound: exactly max_length - margin loads, one more token does not.
    fits = write_profile(f"[quality]\nmax_tokens = {2048 - PROMPT_TOKEN_MARGIN}\n", name="fits.toml")
    assert load_profile(str(fits)).config.quality.max_tokens == 2048 - PROMPT_TOKEN_MARGIN
    with pytest.raises(ProfileError, match="max_tokens"):
        load_profile(str(write_profile(f"[quality]\nmax_tokens = {2049 - PROMPT_TOKEN_MARGIN}\n", name="over.toml")))
    # The shipped profiles and the schema defaults satisfy it.
    for name in ("tiny", "paper"):
        config = load_profile(name).config
        assert config.quality.max_tokens <= config.sft.max_length - PROMPT_TOKEN_MARGIN, name
    defaults = OrionConfig()
    assert defaults.quality.max_tokens <= defaults.sft.max_length - PROMPT_TOKEN_MARGIN


def test_sft_training_args_pass_through_to_trl(write_profile):
    """[sft.training_args] holds any trl.SFTConfig field, as is, beside the [sft] keys (which it cannot repeat)."""
    path = write_profile(
        """
        [sft]
        lora = false
        learning_rate = 1e-5
        [sft.training_args]
        lr_scheduler_type = "cosine"
        warmup_steps = 0.1
        weight_decay = 0.01
        """
    )
    sft = load_profile(str(path)).config.sft
    assert sft.training_args == {"lr_scheduler_type": "cosine", "warmup_steps": 0.1, "weight_decay": 0.01}
    args = sft.trainer_args()
    assert args["learning_rate"] == 1e-5 and args["lr_scheduler_type"] == "cosine" and args["weight_decay"] == 0.01
    assert args["num_train_epochs"] == sft.num_train_epochs and args["per_device_train_batch_size"] == sft.per_device_train_batch_size
    assert "max_length" not in args  # the SFT code sets TRL's max_length (None) itself
    from orion_assets.profiles.sft import (
        SFT_RESERVED_ARGS,
        SFT_TRAINER_FIELDS,
        trl_sft_config_fields,
    )

    fields = trl_sft_config_fields()
    assert set(args) <= fields and set(SFT_TRAINER_FIELDS) <= fields and set(SFT_RESERVED_ARGS) <= fields
    # the shipped profiles hold no pass-through keys, and loading them does not import TRL (seconds of torch)
    assert load_profile("tiny").config.sft.training_args == {} == load_profile("paper").config.sft.training_args
    import subprocess
    import sys

    code = "import sys; from orion_assets.profiles import load_profile; load_profile('paper'); print('trl' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
