"""The training run's typed configuration: YAML file + `key=value` overrides -> `TrainConfig`.

Each concern keeps its own dataclass next to the code that uses it (rollout, reward, advantage,
loss, stages); this module composes them and adds the model, data, optimizer and run settings.
YAML is read with OmegaConf (interpolation, dot-list overrides), then built into the dataclasses
field by field, so a misspelled key fails naming its path and the valid keys, and each
dataclass's own validation runs. Nothing here touches torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from srpo_megatron.algorithms.advantages import AdvantageConfig
from srpo_megatron.algorithms.policy_loss import PolicyLossConfig
from srpo_megatron.data.stages import StageConfig
from srpo_megatron.rewards.combine import RewardConfig
from srpo_megatron.rollout.sampling import DEFAULT_INSTRUCTIONS
from srpo_megatron.rollout.types import RolloutConfig
from srpo_megatron.structured import build


@dataclass(frozen=True)
class ModelConfig:
    """The policy model and how it is split."""

    hf_path: str = ""
    """HF directory of the initial policy (and reference) weights; its tokenizer is used too. Checked to
    hold a config.json when the config is read."""
    tensor_parallel: int = 1
    """Megatron tensor-parallel size; must divide the attention heads and KV heads."""
    pipeline_parallel: int = 1
    """Megatron pipeline-parallel size; must divide the number of layers."""
    dtype: str = "float32"
    """Parameter dtype: "float32" or "bfloat16" (H100 runs)."""

    def __post_init__(self) -> None:
        if not self.hf_path:
            raise ValueError("model.hf_path is required: the HF directory of the initial policy")
        if not (Path(self.hf_path) / "config.json").is_file():  # else HF reads it as a hub repo id
            raise ValueError(
                f"model.hf_path={self.hf_path!r} is not an HF model directory (no config.json there); "
                "point it at the directory that holds the policy's config.json and weights"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.dtype must be 'float32' or 'bfloat16' (got {self.dtype!r})")


@dataclass(frozen=True)
class DataConfig:
    """Training problems, per domain, in the project's row schema (jsonl / json / parquet)."""

    math: list[str] = field(default_factory=list)
    """Math files (rows with `prompt` and `answer`)."""
    code: list[str] = field(default_factory=list)
    """Code files (rows with `prompt` and `tests`)."""
    prompts_per_step: int = 8
    """B: prompts per optimizer step over all data-parallel ranks (SRPO: 256)."""
    eval_math: list[str] = field(default_factory=list)
    """Held-out math files, scored during training (see training.eval_every)."""
    eval_code: list[str] = field(default_factory=list)
    """Held-out code files, scored during training."""
    math_instruction: str = DEFAULT_INSTRUCTIONS["math"]
    """Appended to every math problem before the chat template (evaluation's default too)."""
    code_instruction: str = DEFAULT_INSTRUCTIONS["code"]
    """Appended to every code problem before the chat template (evaluation's default too)."""

    def __post_init__(self) -> None:
        if not self.math and not self.code:
            raise ValueError("data: give at least one file in data.math or data.code")
        if self.prompts_per_step < 1:
            raise ValueError(f"data.prompts_per_step must be >= 1 (got {self.prompts_per_step})")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW through megatron's optimizer. Defaults are SRPO's published recipe."""

    lr: float = 1e-6
    """Peak learning rate (constant after warm-up)."""
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many optimizer updates."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables it."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optimizer.lr must be > 0 (got {self.lr})")
        if self.warmup_steps < 0 or self.clip_grad < 0:
            raise ValueError("optimizer.warmup_steps and optimizer.clip_grad must be >= 0")


SAMPLERS = ("history_resampling", "uniform", "dynamic_sampling")


@dataclass(frozen=True)
class TrainingConfig:
    """The loop: how long, how batches split, where the run writes."""

    run_dir: str = "runs/srpo"
    """Metrics, TensorBoard events and checkpoints go here (shared storage on clusters)."""
    steps: int = 10
    """Total optimizer steps (each: rollout, score, update(s), sync)."""
    updates_per_step: int = 1
    """Mini-batches (optimizer updates) per step over the step's rollouts."""
    micro_batch_size: int = 4
    """Sequences per forward/backward micro-batch (when `max_tokens_per_micro_batch` is 0)."""
    max_tokens_per_micro_batch: int = 0
    """Token budget of a micro-batch: rows are sorted by length and grouped so that rows x
    longest row stays within it (a row longer than the budget goes alone); 0 groups
    `micro_batch_size` consecutive rows. Either way a micro-batch is cut to its own longest row."""
    pack_sequences: bool = True
    """Run each micro-batch as one THD pack of its rows' tokens (megatron's PackedSeqParams):
    no layer computes on padding. False: right-padded [b, T] micro-batches."""
    share_prompts: bool = True
    """With `pack_sequences`: rows of a micro-batch with the same prompt (a group's rollouts)
    compute it once, each response attending to it at its own positions. Needs the local spec's
    SDPA attention (`models/attention.py`, CPU); with Transformer Engine the micro-batch runs as a
    plain THD pack."""
    seed: int = 1234
    sampler: str = "history_resampling"
    """How prompts are drawn: `history_resampling` (SRPO: at each epoch boundary drop the prompts
    whose rollouts were all correct), `uniform` (plain GRPO: every prompt once per epoch) or
    `dynamic_sampling` (DAPO: uniform, then drop all-correct and all-wrong groups and draw more
    prompts to refill), the last two for comparison runs."""
    dynamic_sampling_rounds: int = 3
    """Extra prompt draws per step that dynamic sampling may make."""
    eval_every: int = 0
    """Score the held-out sets every N steps (0: never on a schedule); with held-out data they are
    also scored before training, at the end of every stage and at the end."""
    eval_samples: int = 4
    """Samples per held-out problem (avg@k at the rollout temperature)."""
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    reference_model: bool = False
    """Keep a frozen reference model for the `kl` metric even when the KL loss is off."""
    stop_after: int = 0
    """Stop after this many steps of this process (testing preemption); 0 runs to `steps`."""

    def __post_init__(self) -> None:
        for name in ("steps", "updates_per_step", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1 (got {getattr(self, name)})")
        if self.max_tokens_per_micro_batch < 0:
            raise ValueError(f"training.max_tokens_per_micro_batch must be >= 0 "
                             f"(got {self.max_tokens_per_micro_batch}); 0 groups micro_batch_size rows")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"training.sampler must be one of {', '.join(SAMPLERS)} (got {self.sampler!r})")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one SRPO run needs."""

    model: ModelConfig
    data: DataConfig
    stages: list[StageConfig]
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        domains = {d for stage in self.stages for d in stage.mixture}
        missing = sorted(d for d in domains if not getattr(self.data, d, None))
        if missing:
            raise ValueError(f"stages mix domains {missing} but data has no files for them")
        if not self.stages:
            raise ValueError("stages: configure at least one stage")
        model_parallel = self.model.tensor_parallel * self.model.pipeline_parallel
        if model_parallel % self.rollout.tensor_parallel_size:
            raise ValueError(
                f"rollout.tensor_parallel_size={self.rollout.tensor_parallel_size} must divide "
                f"model.tensor_parallel x model.pipeline_parallel = {model_parallel}: each model-parallel "
                "group hosts whole rollout engines")


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply `a.b=value` overrides, build and validate `TrainConfig`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        merged = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides or [])))
        data = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        raise ValueError(f"{path}: {err}") from err
    try:
        return build(TrainConfig, data, "")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)
