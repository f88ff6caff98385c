"""The LLM simulator over real HTTP: vLLM's and DeepSeek's shapes and refusals, and the answers a
student, a reasoning teacher and a judge really give, through the openai SDK and OpenAIEndpoint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from orion_assets.llm import GenerationRequest, SamplingParams, chat, make_endpoint
from orion_assets.llm.openai_backend import OpenAIEndpoint
from orion_assets.method import prompts
from orion_assets.method.grading import extract_answer, normalize_gold
from orion_assets.profiles.schema import EndpointConfig
from orion_assets.store import Store
from orion_assets_tests.conftest import REPO_ROOT, gsm8k_train_rows
from orion_devtools.llm_simulator import REFLECTION_FORMATS, SimConfig, Simulator

BASE = "Qwen/Qwen2.5-1.5B-Instruct"
ROWS = gsm8k_train_rows(200)
GOLD = {r["question"].strip(): normalize_gold(r["answer"].rsplit("####", 1)[1].strip().replace(",", "")) for r in ROWS}
PROBLEMS = list(GOLD)


@pytest.fixture(scope="module")
def student() -> Iterator[Simulator]:
    cfg = SimConfig(
        persona="student", model=BASE, adapters={"orion": "rev-1", "teacher_sft": "rev-1"}, max_model_len=4096,
        correct_rate=0.5, correct_rate_by_model={"orion": 0.8}, loop_rate=0.3, copy_rate=0.2, unsplittable_rate=0.1,
    )  # fmt: skip
    with Simulator(cfg, port=0) as sim:
        yield sim


@pytest.fixture(scope="module")
def teacher() -> Iterator[Simulator]:
    cfg = SimConfig(persona="teacher_reasoning_content", model="deepseek-reasoner", max_model_len=131072,
                    reasoning_words=300, teacher_correct_rate=1.0)  # fmt: skip
    with Simulator(cfg, port=0) as sim:
        yield sim


def _as(sim: Simulator, **fields: Any) -> Simulator:
    """The simulator with these config fields, restarted only when they differ."""
    if any(getattr(sim.cfg, k) != v for k, v in fields.items()):
        sim.restart(**fields)
    sim.reset_log()
    return sim


def _post(sim: Simulator, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"{sim.base_url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _client(sim: Simulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="EMPTY", max_retries=0, timeout=30)


def _endpoint(sim: Simulator, tmp_path: Path, model: str, role: str = "student", **overrides: Any) -> OpenAIEndpoint:
    values = dict(backend="openai", base_url=sim.base_url, model=model, concurrency=8, timeout_s=30.0, max_retries=3)
    values.update(overrides)
    endpoint = make_endpoint(EndpointConfig(**values), Store(tmp_path / f"{role}-{model.replace('/', '_')}.duckdb"), role=role)
    assert isinstance(endpoint, OpenAIEndpoint)
    endpoint.backoff_base_s = 0.01
    return endpoint


def _solve(problem: str) -> list[dict[str, str]]:
    return list(prompts.messages("solve", problem=problem))


def _is_right(text: str | None, gold: str) -> bool:
    answer, _ = extract_answer(text or "")
    try:
        return answer is not None and abs(float(answer.replace(",", "")) - float(gold)) < 1e-6
    except ValueError:
        return False


# -- vLLM's routes and refusals ------------------------------------------------------------------


def test_models_lists_the_base_model_and_every_adapter_as_vllm_does(student: Simulator) -> None:
    _as(student, adapters={"orion": "rev-1", "teacher_sft": "rev-1"})
    assert [m.id for m in _client(student).models.list()] == [BASE, "orion", "teacher_sft"]
    with urllib.request.urlopen(f"{student.base_url}/models", timeout=10) as resp:
        cards = json.loads(resp.read())
    assert cards["object"] == "list"
    base, orion, _ = cards["data"]
    assert {c["object"] for c in cards["data"]} == {"model"} and {c["owned_by"] for c in cards["data"]} == {"vllm"}
    assert (base["root"], base["parent"], base["max_model_len"]) == (BASE, None, 4096)
    assert (orion["root"], orion["parent"], orion["max_model_len"]) == ("rev-1", BASE, None)
    assert orion["permission"][0]["object"] == "model_permission"


def test_unknown_model_is_vllms_404(student: Simulator) -> None:
    status, body = _post(student, {"model": "orion-typo", "messages": _solve(PROBLEMS[0]), "max_tokens": 16})
    assert status == 404
    assert body == {"error": {"message": f"The model `orion-typo` does not exist. Valid aliases: {student.cfg.model}.",
                              "type": "NotFoundError",
                              "param": "model", "code": 404}}  # fmt: skip
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        _client(student).chat.completions.create(model="nope", messages=_solve(PROBLEMS[0]), max_tokens=8)


def test_context_overflow_is_vllms_400_and_the_endpoint_does_not_retry_it(student: Simulator, tmp_path: Path) -> None:
    _as(student)
    messages = _solve(PROBLEMS[1])
    too_long = [{"role": "user", "content": "lorem " * 3200}]
    status, body = _post(student, {"model": "orion", "messages": too_long, "max_tokens": 16})
    assert status == 400
    # vLLM 0.32 tokenizes with truncation at max_model_len + 1: "at least 4097", whatever the prompt's length.
    message = ("This model's maximum context length is 4096 tokens. However, your prompt contains at least 4097 input "
               "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input "
               "prompt. (parameter=input_tokens, value=4097)")  # fmt: skip
    assert body == {"error": {"message": message, "type": "BadRequestError", "param": "input_tokens", "code": 400}}
    # A prompt that fits with max_tokens that do not: vLLM 0.32 clamps max_tokens to what is left.
    status, body = _post(student, {"model": "orion", "messages": messages, "max_tokens": 4090})
    assert status == 200 and student.requests()[-1]["max_tokens"] == 4096 - body["usage"]["prompt_tokens"]
    status, body = _post(student, {"model": "orion", "messages": messages, "max_completion_tokens": 5000})
    assert status == 400 and body["error"]["param"] == "max_completion_tokens"
    assert body["error"]["message"].startswith("max_completion_tokens=5000 cannot be greater than max_model_len=4096.")
    assert [e["status"] for e in student.requests()] == [400, 200, 400]

    student.reset_log()
    endpoint = _endpoint(student, tmp_path, "orion", max_retries=5)
    params = SamplingParams(max_tokens=16, temperature=0.6, seed=0)
    result = endpoint.generate([GenerationRequest(tuple(too_long), params)])[0]
    assert result.finish_reason == "error" and result.retries == 0 and result.text is None
    assert "HTTP 400" in result.error and "maximum context length is 4096 tokens" in result.error
    assert len(student.requests()) == 1  # a 400 is final: sent once whatever max_retries says


def test_replies_are_cut_at_max_tokens_with_finish_reason_length(student: Simulator) -> None:
    _as(student)
    client = _client(student)
    messages = _solve(PROBLEMS[2])
    for seed in range(20):  # a sample that ends by itself (not a loop)
        full = client.chat.completions.create(model=BASE, messages=messages, max_tokens=2000, seed=seed)
        if full.choices[0].finish_reason == "stop":
            break
    cut = client.chat.completions.create(model=BASE, messages=messages, max_tokens=12, seed=seed)
    later = client.chat.completions.create(model=BASE, messages=messages, max_completion_tokens=15, seed=seed)
    assert full.choices[0].finish_reason == "stop" and full.usage.completion_tokens > 15
    words = len(messages[0]["content"].split())
    assert full.usage.prompt_tokens == -(-words * 13 // 10) + 4 + 3  # ceil(1.3 words) + message + generation prompt
    for reply, budget in ((cut, 12), (later, 15)):
        text = reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == budget
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + budget
        assert full.choices[0].message.content.startswith(text) and -(-len(text.split()) * 13 // 10) <= budget
    log = student.requests()
    assert [(e["max_tokens"], e["finish_reason"], e["completion_tokens"]) for e in log[-2:]] == [(12, "length", 12), (15, "length", 15)]


# -- what the student answers --------------------------------------------------------------------


def test_student_is_right_at_its_rate_per_model_in_varied_formats_and_loops_end_in_length(
    student: Simulator, tmp_path: Path
) -> None:
    _as(student)
    params = SamplingParams(max_tokens=300, temperature=0.6, seed=0)
    requests = [GenerationRequest(chat(("user", m[0]["content"])), params) for m in map(_solve, PROBLEMS)]
    rates = {}
    for model, rate in ((BASE, 0.5), ("orion", 0.8)):
        results = _endpoint(student, tmp_path, model).generate(requests)
        assert all(r.ok for r in results)
        right = [_is_right(r.text, GOLD[p]) for r, p in zip(results, PROBLEMS, strict=True)]
        rates[model] = sum(right) / len(right)
        assert abs(rates[model] - rate) < 0.1, (model, rates[model])
        loops = [r for r in results if r.finish_reason == "length"]
        assert loops and all(r.completion_tokens == 300 and "Wait, let me recompute" in r.text for r in loops)
        assert not any(ok for ok, r in zip(right, results, strict=True) if r.finish_reason == "length")
        texts = [r.text for r in results]
        assert any("**Answer:**" in t for t in texts) and any("(C)" in t for t in texts)
        assert any(re.search(r"The answer is -?\d", t) for t in texts) and any("\\boxed" not in t for t in texts)
    log = student.requests()
    for model in (BASE, "orion"):  # the server's intent and what a grader reads agree exactly
        intended = sum(1 for e in log if e["model"] == model and e["outcome"] == "correct")
        assert intended == round(rates[model] * len(PROBLEMS))
    wrong_formats = Counter(e["format"] for e in log if e["outcome"] != "correct")
    assert {"boxed", "answer_is", "bold", "choice", "none", "loop"} <= set(wrong_formats)


def test_long_float_golds_are_sometimes_written_rounded_and_unknown_problems_get_a_wrong_number(student: Simulator) -> None:
    _as(student)
    with (REPO_ROOT / "orion_assets" / "data" / "benchmarks" / "gsm_hard.jsonl").open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    problem, gold = next((r["input"], normalize_gold(r["target"])) for r in rows
                         if "." in normalize_gold(r["target"]) and len(normalize_gold(r["target"]).split(".")[1]) > 4)  # fmt: skip
    client = _client(student)
    texts = [client.chat.completions.create(model="orion", messages=_solve(problem), max_tokens=300, seed=s)
             .choices[0].message.content for s in range(40)]  # fmt: skip
    right = [t for t, e in zip(texts, student.requests(), strict=True) if e["outcome"] == "correct"]
    assert any(gold in t for t in right) and any(f"{float(gold):.2f}" in t and gold not in t for t in right)
    student.reset_log()
    riddle = "What is the airspeed of an unladen swallow, in furlongs per fortnight?"
    reply = client.chat.completions.create(model="orion", messages=_solve(riddle), max_tokens=300, seed=1)
    entry = student.requests()[0]
    assert entry["problem_known"] is False and entry["outcome"] == "unknown" and reply.choices[0].message.content


def test_reflection_replies_come_in_every_real_format(student: Simulator) -> None:
    _as(student)
    client = _client(student)
    replies = []
    for i, row in enumerate(ROWS[:180]):
        problem, teacher_cot = row["question"].strip(), row["answer"]
        if i % 2:
            messages = prompts.messages("reflect_no_error", problem=problem, teacher_cot=teacher_cot)
        else:
            attempt = f"I added everything up.\nSo the answer is \\boxed{{{int(GOLD[problem]) + 3}}}."
            messages = prompts.messages("reflect_orion", problem=problem, teacher_cot=teacher_cot, student_attempt=attempt)
        reply = client.chat.completions.create(model="orion", messages=list(messages), max_tokens=1000, seed=0)
        replies.append((problem, teacher_cot, reply.choices[0].message.content))
    log = student.requests()
    assert [e["kind"] for e in log] == ["reflect_with_error", "reflect_without_error"] * 90
    formats = [e["format"] for e in log]
    assert set(formats) == {*REFLECTION_FORMATS, "unsplittable"}
    markers = {
        "plain": "\nSOLUTION: ", "markdown": "\n### Solution\n", "bold": "**Solution:** ", "numbered": "\n2. Solution: ",
        "lower": "\nsolution: ", "refined": "\n\nRefined Solution: ", "solution_inner_solution": "\nSolution: step 1: ",
    }  # fmt: skip
    refined_right = refined = 0
    for (problem, teacher_cot, text), entry in zip(replies, log, strict=True):
        fmt = entry["format"]
        if fmt in markers:
            assert markers[fmt] in text, (fmt, text)
        if fmt == "think":
            assert text.startswith("<think>\n") and "</think>\n\nREFLECTION: " in text
        if fmt == "notes_inner_solution":
            assert len(re.findall(r"solution:", text, re.I)) == 2
        if fmt == "unsplittable":
            assert not re.search(r"(?im)^\W*(reflection|solution)\W*:", text)
        if entry["outcome"] == "copy":
            assert text.endswith(teacher_cot.strip())  # the teacher CoT verbatim
            continue
        assert teacher_cot.strip() not in text  # in its own words...
        cot_numbers = set(re.findall(r"\d+", teacher_cot))
        assert any(n in cot_numbers for n in re.findall(r"\d+", text.split("\n", 1)[-1]))  # ...with the teacher's numbers
        refined += 1
        refined_right += _is_right(text, GOLD[problem])
        assert _is_right(text, GOLD[problem]) == (entry["outcome"] == "correct")
    assert abs(refined_right / refined - 0.6) < 0.12
    assert 0.1 < Counter(e["outcome"] for e in log)["copy"] / len(log) < 0.3
    # Reflection notes that box the earlier wrong guess: a parser taking the first box is wrong.
    boxes = [(p, re.findall(r"\\boxed\{([^}]*)\}", t)) for p, _, t in replies]
    assert any(len(b) >= 2 and b[0] != GOLD[p] for p, b in boxes)


def test_answers_are_deterministic_and_an_adapter_revision_changes_only_its_answers(student: Simulator) -> None:
    _as(student, adapters={"orion": "rev-1", "teacher_sft": "rev-1"})
    names = (BASE, "orion", "teacher_sft")

    def answers() -> dict[str, list[str]]:
        client = _client(student)
        return {
            name: [client.chat.completions.create(model=name, messages=_solve(p), max_tokens=200, seed=3)
                   .choices[0].message.content for p in PROBLEMS[:20]]
            for name in names
        }  # fmt: skip

    first = answers()
    assert answers() == first
    port = student.port
    student.restart(adapters={"orion": "rev-2", "teacher_sft": "rev-1"})
    assert student.port == port
    second = answers()
    assert second[BASE] == first[BASE] and second["teacher_sft"] == first["teacher_sft"]
    changed = sum(a != b for a, b in zip(first["orion"], second["orion"], strict=True))
    assert changed >= 14, changed
    assert len(student.requests()) == 3 * 60  # the log outlives the restart
    student.restart(adapters={"orion": "rev-1", "teacher_sft": "rev-1"})
    assert answers()["orion"] == first["orion"]
    other_seed = _client(student).chat.completions.create(model="orion", messages=_solve(PROBLEMS[0]), max_tokens=200, seed=4)
    assert [e["seed"] for e in student.requests()[-2:]] == [3, 4] and other_seed.choices[0].message.content


def test_request_log_fields_keep_alive_and_reset(student: Simulator) -> None:
    _as(student)
    client = _client(student)
    for i in range(5):
        client.chat.completions.create(model="orion", messages=_solve(PROBLEMS[i]), max_tokens=64, seed=i)
    log = student.requests()
    assert len(log) == 5 and len({e["conn"] for e in log}) == 1  # one kept-alive connection
    for entry in log:
        assert {"model", "kind", "prompt_tokens", "max_tokens", "status", "finish_reason", "completion_tokens", "t"} <= set(entry)
        assert entry["model"] == "orion" and entry["kind"] == "solve" and entry["status"] == 200 and entry["max_tokens"] == 64
    assert [e["t"] for e in log] == sorted(e["t"] for e in log)
    student.reset_log()
    assert student.requests() == []


# -- the teachers and the judge ------------------------------------------------------------------


def test_deepseek_teacher_thinks_in_reasoning_content_and_is_cut_while_thinking(teacher: Simulator, tmp_path: Path) -> None:
    _as(teacher, persona="teacher_reasoning_content", model="deepseek-reasoner")
    endpoint = _endpoint(teacher, tmp_path, "deepseek-reasoner", role="teacher")
    full = SamplingParams(max_tokens=4000, temperature=0.6, seed=0)
    results = endpoint.generate([GenerationRequest(chat(("user", _solve(p)[0]["content"])), full) for p in PROBLEMS[:20]])
    for result, problem in zip(results, PROBLEMS, strict=False):
        assert result.finish_reason == "stop" and result.reasoning and result.text
        assert "Wait," in result.reasoning and "check" in result.reasoning
        assert "<think>" not in result.text and _is_right(result.text, GOLD[problem])
        assert len(result.reasoning.split()) > 2 * len(result.text.split())
    guesses = [(re.findall(r"\\boxed\{([^}]*)\}", r.reasoning), GOLD[p]) for r, p in zip(results, PROBLEMS, strict=False)]
    assert any(g for g, _ in guesses) and all(gold not in g for g, gold in guesses)  # boxed guesses, all wrong
    status, body = _post(teacher, {"model": "deepseek-reasoner", "messages": _solve(PROBLEMS[0]), "max_tokens": 4000,
                                   "seed": 0})
    usage, message = body["usage"], body["choices"][0]["message"]
    assert status == 200 and message["content"] == results[0].text and message["reasoning_content"] == results[0].reasoning
    assert 0 < usage["completion_tokens_details"]["reasoning_tokens"] < usage["completion_tokens"]
    assert usage["prompt_cache_miss_tokens"] == usage["prompt_tokens"]
    cut = endpoint.generate([GenerationRequest(chat(("user", _solve(PROBLEMS[0])[0]["content"])),
                                               SamplingParams(max_tokens=40, temperature=0.6, seed=0))])[0]  # fmt: skip
    assert cut.finish_reason == "length" and cut.text == "" and cut.reasoning and results[0].reasoning.startswith(cut.reasoning)
    assert teacher.requests()[-1]["reasoning_tokens"] == teacher.requests()[-1]["completion_tokens"] == 40
    status, body = _post(teacher, {"model": "deepseek-chat-x", "messages": _solve(PROBLEMS[0])})
    assert (status, body["error"]["message"], body["error"]["code"]) == (400, "Model Not Exist", "invalid_request_error")
    status, body = _post(teacher, {"model": "deepseek-reasoner", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "4", "reasoning_content": "2+2"},
        {"role": "user", "content": _solve(PROBLEMS[0])[0]["content"]}]})  # fmt: skip
    assert status == 400 and "Please remove the reasoning_content" in body["error"]["message"]


def test_r1_distill_teacher_writes_think_blocks_in_content(teacher: Simulator) -> None:
    _as(teacher, persona="teacher_think", model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", max_model_len=32768)
    client = _client(teacher)
    for problem in PROBLEMS[:5]:
        reply = client.chat.completions.create(model=teacher.cfg.model, messages=_solve(problem), max_tokens=4000, seed=0)
        text = reply.choices[0].message.content
        thinking, closed, answer = text.partition("\n</think>\n\n")
        assert thinking.startswith("<think>\n") and closed and "Wait," in thinking and _is_right(answer, GOLD[problem])
        assert getattr(reply.choices[0].message, "reasoning", None) is None
    cut = client.chat.completions.create(model=teacher.cfg.model, messages=_solve(PROBLEMS[0]), max_tokens=40, seed=0)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 40
    assert cut.choices[0].message.content.startswith("<think>\n") and "</think>" not in cut.choices[0].message.content


def test_judge_replies_with_scores_in_the_shapes_judges_write(teacher: Simulator) -> None:
    _as(teacher, persona="judge", model="judge-model", max_model_len=8192)
    client = _client(teacher)
    styles, scores = Counter(), {}
    for i, row in enumerate(ROWS[:30]):
        messages = prompts.messages("judge", problem=row["question"], cot=row["answer"])
        text = client.chat.completions.create(model="judge-model", messages=list(messages), max_tokens=200).choices[0].message.content
        again = client.chat.completions.create(model="judge-model", messages=list(messages), max_tokens=200).choices[0].message.content
        assert text == again
        styles["fenced" if text.startswith("```json") else "json" if text.startswith("{") else "sentence"] += 1
        scores[i] = json.loads(re.search(r"\{.*\}", text, re.S).group(0))
        assert set(scores[i]) == {"coherence", "logical_consistency"} and all(1 <= v <= 5 for v in scores[i].values())
    assert set(styles) == {"fenced", "json", "sentence"} and len({tuple(s.values()) for s in scores.values()}) > 3
    assert {e["kind"] for e in teacher.requests()} == {"judge"}


# -- timing, faults, the script, a real tokenizer ------------------------------------------------


def test_latency_grows_with_completion_tokens_and_requests_overlap() -> None:
    cfg = SimConfig(latency_s=0.02, latency_per_token_s=0.002, correct_rate=0.0, loop_rate=1.0)  # every reply loops
    with Simulator(cfg, port=0) as sim:
        client = _client(sim)

        def timed(max_tokens: int, problem: str) -> float:
            started = time.monotonic()
            client.chat.completions.create(model=BASE, messages=_solve(problem), max_tokens=max_tokens)
            return time.monotonic() - started

        short, long = timed(10, PROBLEMS[0]), timed(300, PROBLEMS[1])
        assert long > 3 * short
        threads = [threading.Thread(target=timed, args=(300, p)) for p in PROBLEMS[2:8]]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert time.monotonic() - started < 3 * long  # six at once, not one after another
        waits = {e["completion_tokens"]: e["t_done"] - e["t"] for e in sim.requests()}
        assert waits[300] > waits[10] + 0.4


def test_faults_are_transient_and_the_endpoint_retries_through_them(tmp_path: Path) -> None:
    with Simulator(SimConfig(fault_rate=0.35, retry_after_s=0, seed=3), port=0) as sim:
        endpoint = _endpoint(sim, tmp_path, BASE, max_retries=10)
        params = SamplingParams(max_tokens=64, temperature=0.6, seed=0)
        results = endpoint.generate([GenerationRequest(chat(("user", _solve(p)[0]["content"])), params) for p in PROBLEMS[:40]])
        log = sim.requests()
    assert all(r.ok for r in results)
    faults = Counter(e.get("fault") for e in log if e["status"] != 200)
    assert set(faults) == {"500", "429", "reset"}
    assert sum(r.retries for r in results) == sum(faults.values()) and len(log) == 40 + sum(faults.values())


def test_script_prints_its_port_and_refuses_unknown_config_keys(tmp_path: Path) -> None:
    bad = tmp_path / "sim.json"
    bad.write_text(json.dumps({"persona": "student", "max_model_length": 4096}))
    done = subprocess.run([sys.executable, "-m", "orion_devtools.llm_simulator", "--config", str(bad), "--port", "0"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and "max_model_length" in done.stderr and "PORT" not in done.stdout
    with pytest.raises(ValueError, match="persona"):
        SimConfig(persona="teacher")


def test_a_real_tokenizer_counts_the_prompt_with_its_chat_template(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([r["question"] + r["answer"] for r in ROWS], trainers.BpeTrainer(
        vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    tok.save(str(tmp_path / "tokenizer.json"))
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "model_max_length": 4096}))  # fmt: skip
    with Simulator(SimConfig(tokenizer=str(tmp_path), max_model_len=4096), port=0) as sim:
        content = _solve(PROBLEMS[0])[0]["content"]
        reply = _client(sim).chat.completions.create(model=BASE, messages=_solve(PROBLEMS[0]), max_tokens=10, seed=1)
    rendered = f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
    assert reply.usage.prompt_tokens == len(tok.encode(rendered).ids) != -(-len(content.split()) * 13 // 10) + 7
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 10
    assert len(tok.encode(reply.choices[0].message.content).ids) <= 10
