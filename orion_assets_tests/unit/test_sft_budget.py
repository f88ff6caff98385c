"""[sft] budget: variants trained on data of different sizes get the same optimizer steps ("steps") or the same
completion tokens ("tokens"); real TRL training of the tiny student, a few steps each."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from orion_assets.profiles import ProfileError, load_profile
from orion_assets.training import TrainParams, TrainResult, config_hash, read_train_log, train, write_sft_parquet
from orion_assets.training.budget import token_budget_max_steps
from orion_assets.training.data import tokenize_example
from orion_assets.training.student import EOS_TOKEN, BuiltModel, build_tiny_student
from orion_assets_tests.conftest import gsm8k_train_rows

BATCH = 2


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory) -> BuiltModel:
    texts = [t for r in gsm8k_train_rows(200) for t in (r["question"], r["answer"])]
    return build_tiny_student(texts, tmp_path_factory.mktemp("budget_student"))


def _rows(n: int, offset: int) -> list[dict]:
    rows = []
    for i, r in enumerate(gsm8k_train_rows(n, offset)):
        body, final = r["answer"].split("####")
        cot = f"{re.sub(r'<<[^>]*>>', '', body).strip()}\nThe final answer is \\boxed{{{final.strip()}}}."
        rows.append({
            "sft_example_id": f"gsm8k-{offset + i}",
            "prompt": [{"role": "user", "content": r["question"]}],
            "completion": [{"role": "assistant", "content": cot}],
        })  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory, tiny_student) -> dict[str, tuple[Path, list[int]]]:
    """A small (3 examples) and a large (8 examples) variant's data, with each example's completion tokens
    (the loss tokens: the completion and its end of turn), counted apart from the trainer."""
    tok = AutoTokenizer.from_pretrained(tiny_student.path)
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    out = {}
    for name, n, offset in (("small", 3, 0), ("large", 8, 3)):
        rows = _rows(n, offset)
        lengths = [sum(tokenize_example(tok, r["prompt"], r["completion"], eos_id)[1]) for r in rows]
        out[name] = (write_sft_parquet(rows, tmp_path_factory.mktemp("budget_data") / f"{name}.parquet"), lengths)
    return out


def _params(student: BuiltModel, data: Path, out: Path, **kw) -> TrainParams:
    values = dict(
        base_model_path=str(student.path), dataset_path=str(data), output_dir=str(out), max_length=512,
        per_device_train_batch_size=BATCH, save_steps=50, learning_rate=1e-3, base_model_hash=student.config_hash,
        device="cpu",
    )
    return TrainParams(**{**values, **kw})


def test_a_budget_without_its_value_is_refused_naming_the_key(write_profile):
    cases = {
        '[sft]\nbudget = "steps"\nmax_steps = -1\n': "needs [sft] max_steps > 0",
        '[sft]\nbudget = "tokens"\nmax_steps = -1\n': "needs [sft] budget_tokens > 0",
        '[sft]\nbudget = "tokens"\nmax_steps = -1\nbudget_tokens = 0\n': "needs [sft] budget_tokens > 0",
        '[sft]\nbudget = "tokens"\nbudget_tokens = 500\n': "[sft] max_steps = 4 cannot apply",  # tiny's max_steps
        "[sft]\nbudget_tokens = 500\n": 'budget = "epochs" does not use [sft] budget_tokens',
        '[sft]\nbudget = "token"\n': "unknown value 'token' for 'sft.budget'",
        # the Trainer would replace the counter with a fresh one on resume
        "[sft.training_args]\nrestore_callback_states_from_checkpoint = true\n": "restores its completion-token counts",
    }
    for body, message in cases.items():
        with pytest.raises(ProfileError, match=re.escape(message)):
            load_profile(str(write_profile(body)))
    sft = load_profile(str(write_profile('[sft]\nbudget = "tokens"\nmax_steps = -1\nbudget_tokens = 500\n'))).config.sft
    assert (sft.budget, sft.budget_tokens) == ("tokens", 500)
    assert load_profile("tiny").config.sft.budget == "epochs"  # the default: today's behaviour
    params = TrainParams.from_sft_config(sft, base_model_path="b", dataset_path="d", output_dir="o")
    with pytest.raises(ValueError, match=re.escape("needs [sft] budget_tokens > 0")):
        TrainParams(**{**params.to_json(), "budget_tokens": None})


def test_the_budget_and_its_value_are_part_of_the_config_hash(tmp_path, tiny_student, two_datasets):
    data = two_datasets["small"][0]
    epochs = _params(tiny_student, data, tmp_path, max_steps=4)
    steps = _params(tiny_student, data, tmp_path, max_steps=4, budget="steps")
    tokens = [_params(tiny_student, data, tmp_path, budget="tokens", budget_tokens=n) for n in (100, 101)]
    hashes = [config_hash(p) for p in (epochs, steps, *tokens)]
    assert len(set(hashes)) == len(hashes), hashes


def test_token_budget_max_steps_is_enough_in_any_order():
    # 4 examples of 1, 2, 3, 10 tokens, 2 per step, 2 steps an epoch: an epoch has 16 tokens, its first step at
    # least 1 + 2 = 3
    assert token_budget_max_steps([10, 1, 3, 2], 3, 2, 2) == 1
    assert token_budget_max_steps([10, 1, 3, 2], 4, 2, 2) == 2
    assert token_budget_max_steps([10, 1, 3, 2], 16, 2, 2) == 2
    assert token_budget_max_steps([10, 1, 3, 2], 17, 2, 2) == 3  # into the second epoch
    assert token_budget_max_steps([10, 1, 3, 2], 35, 2, 2) == 5
    with pytest.raises(ValueError, match="budget_tokens must be > 0"):
        token_budget_max_steps([1], 0, 1, 1)


def test_steps_budget_gives_datasets_of_different_sizes_the_same_steps(tmp_path, tiny_student, two_datasets):
    """4 steps of 2 examples: two passes over the 3 small examples (the dataloader is iterated again), one over
    the 8 large ones; the result counts each example and completion token trained on."""
    results: dict[str, TrainResult] = {}
    for name, (data, _) in two_datasets.items():
        results[name] = train(_params(tiny_student, data, tmp_path / name, max_steps=4, budget="steps"))
    small, large = results["small"], results["large"]
    assert small.steps == large.steps == 4 and small.budget == large.budget == "steps"
    assert (small.epochs, large.epochs) == (2.0, 1.0)
    assert (small.trained_examples, large.trained_examples) == (6, 8)
    assert small.completion_tokens == 2 * sum(two_datasets["small"][1])
    assert large.completion_tokens == sum(two_datasets["large"][1])
    assert [e["epoch"] for e in read_train_log(tmp_path / "small")] == [0.5, 1.0, 1.5, 2.0]


def test_tokens_budget_stops_each_variant_once_it_has_seen_the_budget(tmp_path, tiny_student, two_datasets):
    """The budget is 1.5 passes over the small data: the small variant cycles through its data, the large one does
    not finish one pass; each stops at the first step that reaches the budget, so it overshoots by less than one
    step's completion tokens."""
    budget = sum(two_datasets["small"][1]) * 3 // 2
    epochs = {}
    for name, (data, lengths) in two_datasets.items():
        params = _params(tiny_student, data, tmp_path / name, budget="tokens", budget_tokens=budget)
        result = train(params)
        epochs[name] = result.epochs
        one_step = sum(sorted(lengths)[-BATCH:])  # the most completion tokens one step can take
        assert budget <= result.completion_tokens < budget + one_step, (name, result.completion_tokens, budget)
        assert (result.budget, result.budget_tokens) == ("tokens", budget)
        assert 0 < result.steps <= result.schedule_steps and result.trained_examples <= BATCH * result.steps
        counted = [e["completion_tokens"] for e in read_train_log(tmp_path / name)]
        assert len(counted) == result.steps and counted[-1] == result.completion_tokens
        assert counted[-2] < budget <= counted[-1], counted  # the first step that reached the budget
    assert epochs["small"] > 1.0 > epochs["large"], epochs


def test_tokens_budget_stops_before_the_steps_any_order_could_need(tmp_path, tiny_student, two_datasets):
    """The longest examples first (a sequential sampler over data sorted long to short): the budget is reached at
    step 1, where the schedule's horizon allows for the shortest examples first (3 steps).  A rerun of the finished
    run trains nothing more and reports the counts saved with its checkpoint."""
    data, lengths = two_datasets["large"]
    rows = pq.read_table(data).to_pylist()
    order = sorted(range(len(rows)), key=lambda i: -lengths[i])
    long_first = write_sft_parquet([rows[i] for i in order], tmp_path / "long_first.parquet")
    first_step = sum(sorted(lengths)[-BATCH:])
    budget = first_step - 1
    assert token_budget_max_steps(lengths, budget, BATCH, 4) >= 2
    params = _params(
        tiny_student, long_first, tmp_path / "out", budget="tokens", budget_tokens=budget,
        training_args={"train_sampling_strategy": "sequential"},
    )
    result = train(params)
    assert (result.steps, result.completion_tokens, result.trained_examples) == (1, first_step, BATCH)
    assert result.schedule_steps == token_budget_max_steps(lengths, budget, BATCH, 4) > result.steps
    again = train(params)
    assert (again.steps, again.completion_tokens, again.trained_examples, again.train_tokens) == (1, first_step, 2, 0)
