"""Two-stage (or n-stage) training schedule: which data mixture each step draws from.

SRPO stage 1 trains on hard math alone to grow long, reflective reasoning; stage 2 mixes code in.
The scheduler owns one `HistoryResamplingSampler` per domain of the CURRENT stage, created by a
`SamplerFactory` when the stage begins and dropped when it ends, so each stage starts from a
fresh, full pool with its own history. Its state (stage, step offset, samplers) is checkpointed.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from srpo_megatron.data.sampler import HistoryResamplingSampler


@dataclass(frozen=True)
class StageConfig:
    """One training stage: its data mixture and when it ends."""

    name: str
    """Unique stage name, used in logs and to match checkpoints (e.g. "stage1_math")."""

    mixture: Mapping[str, float]
    """Domain -> positive weight, e.g. {"math": 1.0} or {"math": 0.5, "code": 0.5}; weights are
    normalised, and each step's prompts are split across domains in these proportions."""

    steps: Optional[int] = None
    """End the stage after this many optimizer steps. Give exactly one of steps / epochs."""

    epochs: Optional[int] = None
    """End the stage once every domain's sampler has completed this many epochs over its
    (history-resampled) pool. Give exactly one of steps / epochs."""

    def __post_init__(self) -> None:
        self._check_name_and_mixture()
        self._check_end()

    def _check_name_and_mixture(self) -> None:
        if not self.name:
            raise ValueError("StageConfig.name is empty; give each stage a unique name")
        if not self.mixture:
            raise ValueError(
                f"stage {self.name!r}: StageConfig.mixture is empty; give domain weights, "
                'e.g. {"math": 1.0}'
            )
        for domain, weight in self.mixture.items():
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
                raise ValueError(
                    f"stage {self.name!r}: StageConfig.mixture[{domain!r}]={weight!r} must be a "
                    "finite number > 0; remove the domain instead of giving it weight 0"
                )

    def _check_end(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(
                f"stage {self.name!r}: set exactly one of StageConfig.steps / StageConfig.epochs "
                f"(got steps={self.steps}, epochs={self.epochs})"
            )
        field, value = ("steps", self.steps) if self.steps is not None else ("epochs", self.epochs)
        if not (isinstance(value, int) and value > 0):
            raise ValueError(
                f"stage {self.name!r}: StageConfig.{field}={value!r} must be an int > 0"
            )


def mixture_counts(
    mixture: Mapping[str, float], batch_size: int, multiple_of: int = 1
) -> dict[str, int]:
    """Split `batch_size` prompts across domains in proportion to `mixture`.

    Largest-remainder rounding in units of `multiple_of` (the DP size, so every rank gets whole
    per-domain shares): floors first, then the leftover units go to the largest remainders, ties
    to the domain listed first. Deterministic, and the counts sum to `batch_size`. A domain may
    get 0 when the batch is too small for its weight.
    """
    if multiple_of <= 0 or batch_size <= 0 or batch_size % multiple_of != 0:
        raise ValueError(
            f"batch_size={batch_size} must be a positive multiple of multiple_of={multiple_of}"
        )
    units = batch_size // multiple_of
    total = float(sum(mixture.values()))
    quotas = {domain: units * weight / total for domain, weight in mixture.items()}
    counts = {domain: math.floor(quota) for domain, quota in quotas.items()}
    order = sorted(mixture, key=lambda d: -(quotas[d] - counts[d]))  # stable: ties keep order
    for domain in order[: units - sum(counts.values())]:
        counts[domain] += 1
    return {domain: count * multiple_of for domain, count in counts.items()}


SamplerFactory = Callable[[StageConfig, str, int], HistoryResamplingSampler]
"""(stage, domain, prompts of that domain per step, all DP ranks) -> the domain's sampler."""


def history_sampler_factory(
    dataset_sizes: Mapping[str, int],
    data_parallel_rank: int,
    data_parallel_size: int,
    seed: int = 0,
    enabled: bool = True,
) -> SamplerFactory:
    """A `SamplerFactory` over per-domain datasets of the given sizes.

    Each domain sampler serves its whole per-step share as one micro-batch per rank, and its seed
    is derived from (seed, stage name, domain) with a stable hash, so stages reshuffle differently.
    """

    def make(stage: StageConfig, domain: str, prompts_per_step: int) -> HistoryResamplingSampler:
        if domain not in dataset_sizes:
            raise ValueError(
                f"stage {stage.name!r} mixes domain {domain!r}, which has no dataset; "
                f"datasets: {sorted(dataset_sizes)}"
            )
        return HistoryResamplingSampler(
            total_samples=dataset_sizes[domain],
            consumed_samples=0,
            micro_batch_size=prompts_per_step // data_parallel_size,
            data_parallel_rank=data_parallel_rank,
            data_parallel_size=data_parallel_size,
            seed=seed + zlib.crc32(f"{stage.name}/{domain}".encode()),
            enabled=enabled,
            global_batch_size=prompts_per_step,
        )

    return make


class StageScheduler:
    """Decides the stage, hands out each step's prompts per domain, and switches stages.

    Per step: `next_batch()` -> this rank's dataset indices per domain; after rollouts,
    `record(domain, ids, correct)` or `record_rollouts`; after the optimizer step, `update(step)` with the number of
    completed steps, which returns True when a new stage begins.
    """

    def __init__(
        self,
        stages: Sequence[StageConfig],
        prompts_per_step: int,
        sampler_factory: SamplerFactory,
        data_parallel_size: int = 1,
    ) -> None:
        if not stages:
            raise ValueError("StageScheduler: stages is empty; configure at least one StageConfig")
        names = [stage.name for stage in stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"StageScheduler: duplicate stage names {duplicates}; names must be unique"
            )
        if prompts_per_step <= 0 or prompts_per_step % data_parallel_size != 0:
            raise ValueError(
                f"prompts_per_step={prompts_per_step} must be a positive multiple of "
                f"data_parallel_size={data_parallel_size}"
            )
        self.stages = list(stages)
        self.prompts_per_step = prompts_per_step
        self.data_parallel_size = data_parallel_size
        self._factory = sampler_factory
        self._index = 0
        self._start_step = 0
        self._samplers: dict[str, HistoryResamplingSampler] = {}
        self._iterators: dict[str, Iterator[list[int]]] = {}

    @property
    def stage(self) -> StageConfig:
        return self.stages[self._index]

    def domain_counts(self) -> dict[str, int]:
        """Prompts per domain per step (all DP ranks) for the current stage; zeros left out."""
        counts = mixture_counts(self.stage.mixture, self.prompts_per_step, self.data_parallel_size)
        return {domain: count for domain, count in counts.items() if count > 0}

    def sampler(self, domain: str) -> HistoryResamplingSampler:
        """The current stage's sampler for `domain`, created on first use."""
        counts = self.domain_counts()
        if domain not in counts:
            raise ValueError(
                f"stage {self.stage.name!r} draws no {domain!r} prompts; "
                f"its domains: {sorted(counts)}"
            )
        if domain not in self._samplers:
            self._samplers[domain] = self._factory(self.stage, domain, counts[domain])
        return self._samplers[domain]

    def next_batch(self) -> dict[str, list[int]]:
        """This rank's dataset indices for one step, per domain of the current stage."""
        batch = {}
        for domain in self.domain_counts():
            if domain not in self._iterators:
                self._iterators[domain] = iter(self.sampler(domain))
            batch[domain] = next(self._iterators[domain])
        return batch

    def record(
        self, domain: str, sample_ids: Sequence[int], correct: Sequence[Sequence[bool]]
    ) -> None:
        """Per-rollout correctness of this rank's `domain` prompts (collective over DP)."""
        self.sampler(domain).record(sample_ids, correct)

    def record_rollouts(
        self,
        prompts: Mapping[str, Sequence[int]],
        outcomes: Sequence[tuple[str, int, bool]],
        group_size: int,
    ) -> None:
        """Record one draw: `prompts` as `next_batch` returned them, `outcomes` one (domain,
        index, correct) per rollout in any order, `group_size` of them per prompt. Collective over DP."""
        for domain, ids in prompts.items():
            correct: dict[int, list[bool]] = {int(i): [] for i in ids}
            for outcome_domain, index, ok in outcomes:
                if outcome_domain == domain:
                    correct[index].append(ok)
            wrong = {i: len(c) for i, c in correct.items() if len(c) != group_size}
            if wrong:
                raise ValueError(
                    f"record_rollouts: {domain} prompts need {group_size} rollouts each; "
                    f"got {wrong} (index: rollouts)"
                )
            self.record(domain, ids, [correct[int(i)] for i in ids])

    def recorded_in_earlier_epoch(self, domain: str, index: int) -> bool:
        """Whether the current stage already served and recorded `domain` prompt `index` in an
        earlier epoch (a revisit); a new stage starts with nothing recorded."""
        return self.sampler(domain).recorded_in_earlier_epoch(index)

    def pool_size(self) -> int:
        """Prompts in the current stage's pools, all domains. The same on every DP rank: each
        sampler's history is replicated (`record` is a DP collective)."""
        return sum(len(self.sampler(d).pool()) for d in self.domain_counts())

    def stage_epochs(self) -> int:
        """Epochs completed by the current stage: the minimum over its domains' samplers."""
        return min(
            (self._samplers[d].completed_epochs if d in self._samplers else 0)
            for d in self.domain_counts()
        )

    def stage_done(self, step: int) -> bool:
        """Whether the current stage's end condition holds after `step` completed steps."""
        if self.stage.steps is not None:
            return step - self._start_step >= self.stage.steps
        return self.stage_epochs() >= self.stage.epochs

    @property
    def is_last_stage(self) -> bool:
        return self._index == len(self.stages) - 1

    def update(self, step: int) -> bool:
        """Call after each optimizer step with the number of completed steps; True when the next
        stage begins. The last stage never ends here: `stage_done` tells when it has run out."""
        if self.is_last_stage or not self.stage_done(step):
            return False
        self._index += 1
        self._start_step = step
        self._samplers, self._iterators = {}, {}
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "stage_names": [stage.name for stage in self.stages[: self._index + 1]],
            "stage_index": self._index,
            "stage_start_step": self._start_step,
            "samplers": {domain: s.state_dict() for domain, s in self._samplers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; the configured stages must begin with the checkpoint's stages up to its
        current one (later stages may be changed or appended)."""
        saved = state["stage_names"]
        configured = [stage.name for stage in self.stages[: len(saved)]]
        if configured != saved:
            raise ValueError(
                f"scheduler checkpoint stages {saved} do not match the configured stages "
                f"{[s.name for s in self.stages]}; keep the finished and current stages unchanged"
            )
        self._index = state["stage_index"]
        self._start_step = state["stage_start_step"]
        self._samplers, self._iterators = {}, {}
        for domain, sampler_state in state["samplers"].items():
            self.sampler(domain).load_state_dict(sampler_state)
