"""The trainer's one configuration tree: small dataclasses, loaded from YAML, overridden by dotted keys.

``load_config("run.yaml", ["parallel.tensor_model_parallel_size=2", "distill.loss_sections=[COT]"])`` parses the
YAML, applies each override (values parsed as YAML scalars/lists), rejects unknown keys by their dotted name and
returns a ``Config``. Checks that need only the config live in ``Config.check()``; checks that need the models,
tokenizer or machine live in ``training.validation`` — both name the offending key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megatron_truncdistill.errors import ConfigError
from megatron_truncdistill.layout import check_batch_sizes
from megatron_truncdistill.sections import parse_sections


PARAMS_DTYPES = ("float32", "bfloat16")
"""Parameter dtypes a model may be built, trained and checkpointed in (``dtypes.torch_dtype`` maps them)."""
FP8_FORMATS = ("hybrid", "e4m3")
"""Transformer Engine FP8 formats: hybrid = e4m3 forward, e5m2 gradients."""
FP8_RECIPES = ("delayed", "tensorwise", "mxfp8", "blockwise")
"""megatron-core ``fp8_recipe`` values."""
RECOMPUTE_MODES = ("full", "selective")
"""Activation recomputation: every layer's whole forward, or megatron's selective set (core attention)."""
NON_FINITE_POLICIES = ("stop", "skip")
"""What a step with a NaN/Inf loss term or gradient norm does: stop the run, or skip the update and go on."""


@dataclass
class DataConfig:
    prefixes: list[str] = field(default_factory=list)
    """Bins written by tools/preprocess.py (PREFIX, without _tokens.bin); relative paths resolve from the YAML."""
    weights: list[float] | None = None
    """Blend weights, one per prefix (None = proportional to sample counts)."""
    tokenizer: str = ""
    """Tokenizer directory (or SentencePiece .model) the bins were made with; checked against each manifest."""
    seq_length: int = 4096
    """Tokens per sample fed to the models (0 = the longest document in the bins, rounded up to 16)."""
    packing: bool = False
    """Pack several documents per sample (positions reset, attention confined per document) instead of padding."""
    valid_fraction: float = 0.02
    """Fraction of each prefix's documents (the last ones) held out for validation."""


@dataclass
class ModelBuildFields:
    """How one model is built: precision, layer implementation, recomputation. ``ModelConfig`` adds where the
    model comes from; ``models.transformer_config.BuildOptions`` adds what the run decides (one definition)."""

    params_dtype: str = "float32"
    """One of ``PARAMS_DTYPES``: "float32" or "bfloat16"."""
    use_te: bool | None = None
    """Transformer Engine layers (None = when TE imports and a GPU is present)."""
    fp8: str | None = None
    """FP8 format through Transformer Engine, one of ``FP8_FORMATS`` (None = off)."""
    fp8_recipe: str = "delayed"
    """One of ``FP8_RECIPES``."""
    fp8_first_last_bf16: bool = False
    """Keep the first and last transformer layers in bf16 under FP8 (the layers most sensitive to rounding)."""
    recompute: str | None = None
    """Activation recomputation, one of ``RECOMPUTE_MODES`` or None."""


@dataclass
class ModelConfig(ModelBuildFields):
    hf_config: str | None = None
    """A HF config.json (or a directory holding one) describing the architecture."""
    architecture: dict | None = None
    """The same, inline (tiny examples); used when hf_config is not given."""
    load: str | None = None
    """Converter or trainer checkpoint to start from (None = random init; only sensible for tests/students)."""


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None
    """Interleaved pipeline stages: refused (teacher/student co-location uses the non-interleaved 1F1B schedule)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (GPU with TE/apex only)."""


@dataclass
class KDObjectiveFields:
    """The per-token objective α_kd·KD + (1 − α_kd)·CE. ``losses.KDObjectiveConfig`` adds the math to these
    fields and ``DistillConfig`` adds what the trainer needs around them: one definition for both."""

    divergence: str = "forward_kl"
    """forward_kl | reverse_kl | jsd | tvd | skew_kl | skew_reverse_kl (``losses.divergences``)."""
    temperature: float = 1.0
    """T in p = softmax(z / T) for both models in the KD term; CE always uses T = 1."""
    kd_weight: float = 0.5
    """α_kd in [0, 1]: weight of KD (the paper: 0.5); CE gets 1 − α_kd. 0 = plain CE (no teacher needed)."""
    beta: float = 0.5
    """JSD's teacher weight β in the mixture m = (1 − β)·p_s + β·p_t (β = 0: forward KL, β = 1: reverse KL)."""
    alpha: float = 0.1
    """Skew weight α of skew_kl / skew_reverse_kl (DistiLLM)."""
    t2_scale: bool = False
    """Multiply KD by T² (Hinton) so its gradient scale does not shrink as T grows."""
    chunk_size: int | None = None
    """Tokens per chunk of the vocab-parallel loss (extra memory O(chunk × v/tp)); None: a per-device default."""


@dataclass
class DistillConfig(KDObjectiveFields):
    loss_sections: list[str] = field(default_factory=lambda: ["PROMPT", "COT", "ANSWER"])
    """Sections whose tokens carry loss: any of PROMPT, COT, ANSWER (the paper's A, P+A, CoT, ... conditions)."""
    fused: bool = False
    """Compute logits chunk by chunk from hidden states inside the loss (never the whole micro-batch's logits)."""


@dataclass
class TrainConfig:
    train_steps: int = 100
    micro_batch_size: int = 1
    global_batch_size: int = 8
    """Samples per optimizer step over all data-parallel ranks (accumulation = global / (micro × DP))."""
    seed: int = 1234
    eval_interval: int = 0
    """Steps between validation passes (0 = never)."""
    eval_batches: int = 4
    """Global batches per validation pass."""
    non_finite: str = "stop"
    """One of ``NON_FINITE_POLICIES``. A NaN/Inf loss term or gradient norm is never applied to the weights:
    "stop" ends the run at that step (one line naming the step and the term, exit 2, no checkpoint of it);
    "skip" drops that step's update, logs it as skipped, and trains on."""


@dataclass
class OptimizerConfig:
    """AdamW and its schedule. Defaults reproduce the paper: lr 4e-6, weight decay 0.05, 10% warmup, cosine."""

    lr: float = 4e-6
    """Peak learning rate."""
    min_lr: float = 0.0
    """Floor of the decay."""
    weight_decay: float = 0.05
    """Decoupled (AdamW) weight decay."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    warmup_fraction: float = 0.1
    """Fraction of train.train_steps spent in linear warmup."""
    lr_decay_style: str = "cosine"
    """megatron-core decay style: constant, linear, cosine, inverse-square-root."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (ZeRO-1)."""


@dataclass
class CheckpointConfig:
    save: str | None = None
    """Checkpoint root (default: <run_dir>/checkpoints)."""
    save_interval: int = 0
    """Steps between saves (0 = only at the end and on SIGTERM)."""
    load: str | None = None
    """Resume from this checkpoint root or iter_* directory (optimizer, schedule, RNG, data position)."""


@dataclass
class LoggingConfig:
    run_dir: str = "runs/default"
    log_interval: int = 1
    """Steps between console lines and TensorBoard points (metrics.jsonl records every step)."""
    tensorboard: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    teacher: ModelConfig | None = field(default_factory=ModelConfig)
    """None (YAML ``teacher: null``) trains the student alone on CE: the KD-overhead baseline."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Config-only checks; each failure names its key."""
        _check_config(self)


def _build(cls, values: Any, path: str):
    """Instantiate dataclass ``cls`` from a mapping, recursively, rejecting unknown keys by dotted name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{path}.{key}" if path else key
        if key not in fields:
            raise ConfigError(f"{dotted}: unknown key (known: {', '.join(fields)})")
        sub = _dataclass_type(cls, key)
        if sub is not None and value is not None:
            kwargs[key] = _build(sub, value, dotted)
        else:
            kwargs[key] = _coerce(value, fields[key].type, dotted)
    return cls(**kwargs)


def _coerce(value: Any, annotation: str, dotted: str) -> Any:
    """Numbers YAML reads as strings (``5e-3`` lacks the dot YAML 1.1 wants) become the field's number type."""
    kind = str(annotation).split("|")[0].strip()
    if value is None or isinstance(value, bool) or kind not in ("float", "int"):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{dotted}: expected a number, got {value!r}") from None
    if kind == "int":
        if number != int(number):
            raise ConfigError(f"{dotted}: expected an integer, got {value!r}")
        return int(number)
    return number


def _dataclass_type(cls, name: str):
    default = {f.name: f for f in dataclasses.fields(cls)}[name]
    if default.default_factory is not dataclasses.MISSING:
        probe = default.default_factory()
        return type(probe) if dataclasses.is_dataclass(probe) else None
    return None


def _apply_override(tree: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected dotted.key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """YAML file (optional) + dotted overrides → checked Config. Relative data/model paths resolve from the YAML."""
    tree = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file")
        tree = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        _apply_override(tree, item)
    config = _build(Config, tree, "")
    if path is not None:
        _resolve_paths(config, path.parent)
    config.check()
    return config


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def _resolve_paths(config: Config, base: Path) -> None:
    config.data.prefixes = [_resolve(base, p) for p in config.data.prefixes]
    config.data.tokenizer = _resolve(base, config.data.tokenizer) if config.data.tokenizer else ""
    for model in (config.student, config.teacher):
        if model is not None:
            model.hf_config, model.load = _resolve(base, model.hf_config), _resolve(base, model.load)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _check_config(c: Config) -> None:
    _require(bool(c.data.prefixes), "data.prefixes", "at least one bins prefix is required")
    _require(c.data.weights is None or len(c.data.weights) == len(c.data.prefixes), "data.weights",
             f"{len(c.data.weights or [])} weights for {len(c.data.prefixes)} prefixes")
    _require(bool(c.data.tokenizer), "data.tokenizer", "the tokenizer the bins were made with is required")
    _require(c.data.seq_length >= 0, "data.seq_length", "must be ≥ 0 (0 = the longest document)")
    _require(0 <= c.data.valid_fraction < 1, "data.valid_fraction", "must be in [0, 1)")
    try:
        parse_sections(c.distill.loss_sections)
    except ValueError as err:
        raise ConfigError(f"distill.loss_sections: {err}") from None
    _require(0.0 <= c.distill.kd_weight <= 1.0, "distill.kd_weight", "must be in [0, 1]")
    _require(c.distill.temperature > 0, "distill.temperature", "must be positive")
    _require(c.teacher is not None or c.distill.kd_weight == 0.0, "teacher",
             "teacher: null (student-only) requires distill.kd_weight=0")
    _require(c.parallel.virtual_pipeline_model_parallel_size is None,
             "parallel.virtual_pipeline_model_parallel_size",
             "interleaved pipelines are not supported (co-located teacher/student use the 1F1B schedule; on gloo "
             "megatron-core's batched p2p is also silently wrong with them)")
    for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
        _require(getattr(c.parallel, name) >= 1, f"parallel.{name}", "must be ≥ 1")
    t = c.train
    _require(t.train_steps > 0, "train.train_steps", "must be positive")
    _require(t.non_finite in NON_FINITE_POLICIES, "train.non_finite",
             f"{t.non_finite!r} is not one of {', '.join(NON_FINITE_POLICIES)}")
    _require(c.logging.log_interval > 0, "logging.log_interval", "must be positive")
    _require(t.micro_batch_size > 0, "train.micro_batch_size", "must be positive")
    check_batch_sizes(global_batch=t.global_batch_size, micro_batch=t.micro_batch_size)
    _require(c.optimizer.lr > 0, "optimizer.lr", "must be positive")
    _require(0 <= c.optimizer.warmup_fraction <= 1, "optimizer.warmup_fraction", "must be in [0, 1]")
    for model_key in ("student", "teacher"):
        model = getattr(c, model_key)
        if model is None:
            continue
        _require(model.hf_config is not None or model.architecture is not None or model.load is not None,
                 f"{model_key}.hf_config", "give hf_config, architecture or a checkpoint to load")
        _require(model.params_dtype in PARAMS_DTYPES, f"{model_key}.params_dtype",
                 f"{model.params_dtype!r} is not one of {', '.join(PARAMS_DTYPES)}")
        _require(model.fp8 in (None, *FP8_FORMATS), f"{model_key}.fp8",
                 f"{model.fp8!r} is not one of {', '.join(FP8_FORMATS)} or null")
        _require(model.fp8_recipe in FP8_RECIPES, f"{model_key}.fp8_recipe",
                 f"{model.fp8_recipe!r} is not one of {', '.join(FP8_RECIPES)}")
        _require(model.recompute in (None, *RECOMPUTE_MODES), f"{model_key}.recompute",
                 f"{model.recompute!r} is not one of {', '.join(RECOMPUTE_MODES)} or null")
