"""Prompt samplers: SRPO's epoch-level history resampling and DAPO's in-batch dynamic sampling.

`HistoryResamplingSampler` is a Megatron-style sampler (consumed_samples, micro-batch size,
data-parallel rank/size) whose pool shrinks between epochs: prompts whose rollouts were all
correct in the epoch just finished are dropped; mixed and all-incorrect prompts stay.
`DynamicSamplingFilter` is the DAPO alternative, kept for comparison runs; `draw_informative`
is its refill loop over a step's draws, `draw_once` the plain single draw.
"""

from __future__ import annotations

import copy
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence, TypeVar

import torch
import torch.distributed as dist

from srpo_megatron import platform
from srpo_megatron.algorithms.advantages import zero_variance_groups


def _data_parallel_group(group: Optional[dist.ProcessGroup]) -> Optional[dist.ProcessGroup]:
    """`group`, else megatron's DP group once it exists, else None (= the WORLD group)."""
    if group is not None:
        return group
    # Look megatron up instead of importing it: if it was never imported its parallel state
    # cannot be initialised, and the sampler stays usable (and fast to import) without it.
    parallel_state = sys.modules.get("megatron.core.parallel_state")
    if parallel_state is not None and parallel_state.model_parallel_is_initialized():
        return parallel_state.get_data_parallel_group()
    return None


class HistoryResamplingSampler:
    """Yields this DP rank's micro-batches (lists of dataset indices), forever, epoch after epoch.

    Order: each epoch is a permutation of the current pool seeded with `seed + epoch`; global
    micro-batch k (micro_batch_size * data_parallel_size indices) is split by DP rank, so ranks
    see disjoint indices.

    Epoch end: an epoch serves the largest multiple of `global_batch_size` that fits in the pool;
    the shuffled tail is left out (Megatron's rule), is never recorded, and so stays in the pool.
    `global_batch_size` (the prompts of one training step, default one micro-batch per rank) keeps
    epoch boundaries on step boundaries: the next pool is built lazily when the first micro-batch
    of the next epoch is drawn, so the caller must `record` a step's outcomes before drawing the
    next step's prompts (no prefetching across steps).

    Empty pool: if filtering leaves fewer than `global_batch_size` prompts, the pool resets to
    the full dataset with a RuntimeWarning (`epoch_stats[-1]["reset"]` is True): the run goes
    on instead of stopping when its data has become too easy.

    `enabled=False` is plain GRPO sampling: outcomes are still recorded for `epoch_stats`, but
    the pool never shrinks. Iterate with one iterator at a time: position lives on the sampler.

    Revisits: the sampler remembers every index recorded in a finished epoch, so a caller can
    tell a prompt it serves again (`recorded_in_earlier_epoch`) from one it serves for the first
    time, e.g. to report accuracy on revisited prompts.
    """

    def __init__(
        self,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
        seed: int = 0,
        enabled: bool = True,
        global_batch_size: Optional[int] = None,
        group: Optional[dist.ProcessGroup] = None,
    ) -> None:
        """`consumed_samples` positions the sampler as Megatron's would with an unfiltered pool
        (exact for enabled=False); resume history resampling with `load_state_dict`. `group` is
        the DP group for `record` (default: megatron's DP group, else WORLD)."""
        self.total_samples = total_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.seed = seed
        self.enabled = enabled
        self.global_batch_size = global_batch_size or micro_batch_size * data_parallel_size
        self.group = group
        self._check_sizes()
        self._check_consumed(consumed_samples, "consumed_samples")
        self._pool: list[int] = list(range(total_samples))
        self._history: dict[int, list[int]] = {}  # index -> [n_correct, n_rollouts], this epoch
        self._recorded_earlier: set[int] = set()  # indices recorded in a finished epoch
        self._epoch_stats: list[dict[str, Any]] = []
        self._order: Optional[tuple[int, list[int]]] = None  # (epoch, permuted pool) cache
        self.consumed_samples = consumed_samples
        self._epoch, self._consumed_in_epoch = divmod(consumed_samples, self.epoch_length)

    def _check_sizes(self) -> None:
        for name in ("total_samples", "micro_batch_size", "data_parallel_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        if not 0 <= self.data_parallel_rank < self.data_parallel_size:
            raise ValueError(
                f"data_parallel_rank={self.data_parallel_rank} must lie in "
                f"[0, data_parallel_size={self.data_parallel_size})"
            )
        stride = self.micro_batch_size * self.data_parallel_size
        if self.global_batch_size % stride != 0:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} must be a multiple of "
                f"micro_batch_size x data_parallel_size = {stride}"
            )
        if self.total_samples < self.global_batch_size:
            raise ValueError(
                f"total_samples={self.total_samples} is smaller than one global batch "
                f"({self.global_batch_size}); use more prompts or a smaller batch"
            )

    def _check_consumed(self, consumed: int, name: str) -> None:
        stride = self.micro_batch_size * self.data_parallel_size
        if consumed < 0 or consumed % stride != 0:
            raise ValueError(
                f"{name}={consumed} must be >= 0 and a multiple of micro_batch_size x "
                f"data_parallel_size = {stride} (samples are consumed in global micro-batches)"
            )

    # ----- position ---------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Index of the current epoch (it advances when its first micro-batch is drawn)."""
        return self._epoch

    @property
    def epoch_length(self) -> int:
        """Samples served in the current epoch: the pool truncated to whole global batches."""
        return len(self._pool) // self.global_batch_size * self.global_batch_size

    @property
    def completed_epochs(self) -> int:
        """Epochs fully served, counting the current one once its last micro-batch is drawn."""
        return self._epoch + int(self._consumed_in_epoch >= self.epoch_length)

    def pool(self) -> list[int]:
        """Sorted dataset indices of the current epoch's pool."""
        return list(self._pool)

    def recorded_in_earlier_epoch(self, index: int) -> bool:
        """Whether `index` was served and recorded in an epoch that has finished. An epoch's
        records join this set when the next epoch begins (on its first draw)."""
        return index in self._recorded_earlier

    @property
    def epoch_stats(self) -> list[dict[str, Any]]:
        """One dict per finished epoch: epoch, pool_size, served, recorded, dropped,
        kept_all_incorrect, kept_mixed, all_correct (dropped or, if disabled, kept), next_pool_size,
        reset."""
        return copy.deepcopy(self._epoch_stats)

    def __iter__(self) -> Iterator[list[int]]:
        stride = self.micro_batch_size * self.data_parallel_size
        while True:
            if self._consumed_in_epoch >= self.epoch_length:
                self._start_next_epoch()
            start = self._consumed_in_epoch + self.data_parallel_rank * self.micro_batch_size
            batch = self._epoch_order()[start : start + self.micro_batch_size]
            self._consumed_in_epoch += stride
            self.consumed_samples += stride
            yield batch

    def _epoch_order(self) -> list[int]:
        if self._order is None or self._order[0] != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + self._epoch)
            perm = torch.randperm(len(self._pool), generator=generator).tolist()
            self._order = (self._epoch, [self._pool[i] for i in perm])
        return self._order[1]

    # ----- history ----------------------------------------------------------------------------

    def record(self, sample_ids: Sequence[int], correct: Sequence[Sequence[bool]]) -> None:
        """Record per-rollout correctness for the prompts this rank served.

        Collective when torch.distributed is initialised: every DP rank calls it (with its own,
        possibly empty, lists) and receives every rank's records, so histories stay identical.
        Repeated records of a prompt within an epoch accumulate.
        """
        local = self._validated_records(sample_ids, correct)
        for index, n_correct, n_rollouts in self._gather(local):
            counts = self._history.setdefault(index, [0, 0])
            counts[0] += n_correct
            counts[1] += n_rollouts

    def _validated_records(
        self, sample_ids: Sequence[int], correct: Sequence[Sequence[bool]]
    ) -> list[tuple[int, int, int]]:
        if len(sample_ids) != len(correct):
            raise ValueError(
                f"record: {len(sample_ids)} sample_ids but {len(correct)} correctness lists; "
                "pass one list of per-rollout booleans per prompt"
            )
        records = []
        for index, outcomes in zip(sample_ids, correct, strict=True):
            index = int(index)
            if not 0 <= index < self.total_samples:
                raise ValueError(f"record: sample id {index} outside [0, {self.total_samples})")
            if len(outcomes) == 0:
                raise ValueError(f"record: sample id {index} has no rollout outcomes")
            records.append((index, sum(bool(c) for c in outcomes), len(outcomes)))
        return records

    def _gather(self, local: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        if not (dist.is_available() and dist.is_initialized()):
            return local
        group = _data_parallel_group(self.group)
        world = dist.get_world_size(group)
        if world != self.data_parallel_size:
            raise ValueError(
                f"record: the data-parallel group has {world} ranks but data_parallel_size="
                f"{self.data_parallel_size}; pass the DP group as `group`"
            )
        gathered: list[Optional[list[tuple[int, int, int]]]] = [None] * world
        dist.all_gather_object(gathered, local, group=group)
        return [record for rank_records in gathered for record in rank_records or []]

    def _start_next_epoch(self) -> None:
        pool = set(self._pool)
        outcome = {i: c for i, c in self._history.items() if i in pool}
        all_correct = {i for i, (right, n) in outcome.items() if right == n}
        all_incorrect = sum(1 for right, _ in outcome.values() if right == 0)
        next_pool = [i for i in self._pool if i not in all_correct] if self.enabled else self._pool
        reset = len(next_pool) < self.global_batch_size
        if reset:
            warnings.warn(
                f"history resampling left {len(next_pool)} prompts after epoch {self._epoch}, "
                f"fewer than one global batch ({self.global_batch_size}); resetting the pool to "
                f"all {self.total_samples} prompts",
                RuntimeWarning,
                stacklevel=3,
            )
            next_pool = list(range(self.total_samples))
        self._epoch_stats.append(
            {
                "epoch": self._epoch,
                "pool_size": len(self._pool),
                "served": self.epoch_length,
                "recorded": len(outcome),
                "all_correct": len(all_correct),
                "dropped": len(all_correct) if self.enabled else 0,
                "kept_all_incorrect": all_incorrect,
                "kept_mixed": len(outcome) - len(all_correct) - all_incorrect,
                "next_pool_size": len(next_pool),
                "reset": reset,
            }
        )
        self._pool = list(next_pool)
        self._recorded_earlier.update(self._history)
        self._history = {}
        self._epoch += 1
        self._consumed_in_epoch = 0

    # ----- checkpoint -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue mid-epoch with the same remaining order (plain types)."""
        return {
            "total_samples": self.total_samples,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "epoch": self._epoch,
            "consumed_in_epoch": self._consumed_in_epoch,
            "consumed_samples": self.consumed_samples,
            "pool": list(self._pool),
            "history": sorted([i, c[0], c[1]] for i, c in self._history.items()),
            "recorded_earlier": sorted(self._recorded_earlier),
            "epoch_stats": copy.deepcopy(self._epoch_stats),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("total_samples", "seed", "global_batch_size"):
            if state[name] != getattr(self, name):
                raise ValueError(
                    f"sampler checkpoint has {name}={state[name]} but this sampler has "
                    f"{getattr(self, name)}; resume with the same {name} (the order depends on it)"
                )
        self._check_consumed(state["consumed_in_epoch"], "checkpoint consumed_in_epoch")
        self._epoch = state["epoch"]
        self._consumed_in_epoch = state["consumed_in_epoch"]
        self.consumed_samples = state["consumed_samples"]
        self._pool = list(state["pool"])
        self._history = {i: [c, n] for i, c, n in state["history"]}
        # Checkpoints written before revisits were tracked lack the key: count from here on.
        self._recorded_earlier = set(state.get("recorded_earlier", []))
        self._epoch_stats = copy.deepcopy(state["epoch_stats"])
        self._order = None


@dataclass(frozen=True)
class DynamicSamplingDecision:
    """What to do after one round of DAPO dynamic sampling."""

    keep: torch.Tensor  # [N] bool: this round's groups to train on
    num_kept: int  # groups kept so far in this step
    done: bool  # batch full, or retries exhausted (then train on num_kept groups)


class DynamicSamplingFilter:
    """DAPO dynamic sampling: keep only groups with mixed rewards, over-sample to refill.

    Unlike history resampling this drops all-wrong groups too, and acts inside a step. Call
    `reset()` at the start of a step and `update(rewards)` after each generation round.
    """

    def __init__(self, batch_size: int, group_size: int, max_retries: int = 3) -> None:
        """batch_size: groups wanted per step; max_retries: extra rounds allowed per step."""
        if batch_size <= 0 or group_size < 2:
            raise ValueError(
                f"batch_size={batch_size} must be > 0 and group_size={group_size} >= 2"
            )
        if max_retries < 0:
            raise ValueError(f"max_retries={max_retries} must be >= 0")
        self.batch_size = batch_size
        self.group_size = group_size
        self.max_retries = max_retries
        self.reset()

    def reset(self) -> None:
        self._rounds = 0
        self._kept = 0  # groups kept this step (at most batch_size)

    def update(self, rewards: torch.Tensor) -> DynamicSamplingDecision:
        """rewards: [N*G] for this round's N prompts (G consecutive rollouts per prompt)."""
        informative = ~zero_variance_groups(rewards, self.group_size)  # [N]
        # Keep the first informative groups up to the batch size; extra ones are discarded.
        keep = informative & (informative.cumsum(0) <= self.batch_size - self._kept)  # [N]
        self._rounds += 1
        self._kept += int(keep.sum())  # host sync: whether to draw again is a host-side decision
        done = self._kept == self.batch_size or self._rounds > self.max_retries
        return DynamicSamplingDecision(keep, self._kept, done)


class Scored(Protocol):
    reward: float


S = TypeVar("S", bound=Scored)


def draw_once(draw: Callable[[], list[S]]) -> tuple[list[S], int]:
    """Plain sampling (history resampling or uniform): one draw is the step's rollouts.

    Returns (rollouts to train on, rollouts generated)."""
    samples = draw()
    return samples, len(samples)


def draw_informative(draw: Callable[[], list[S]], group_size: int, extra_draws: int,
                     group: Optional[dist.ProcessGroup] = None) -> tuple[list[S], int]:
    """DAPO dynamic sampling over whole draws: keep the mixed-reward groups of each draw (G
    consecutive rollouts each), drawing again until the first draw's number of groups is filled
    or `extra_draws` more draws were made. Nothing informative at all: train on the first draw.

    Collective over data parallelism (`group`, default megatron's DP group): every replica draws
    as long as any replica is still filling, because each draw records history, a DP collective.
    Returns (rollouts to train on, rollouts generated).
    """
    first = draw()
    generated = len(first)
    dapo = DynamicSamplingFilter(len(first) // group_size, group_size, extra_draws)
    decision = dapo.update(torch.tensor([s.reward for s in first]))
    kept = _keep_groups(first, decision.keep, group_size)
    while _any_replica(not decision.done, group):
        more = draw()
        generated += len(more)
        if not decision.done:
            decision = dapo.update(torch.tensor([s.reward for s in more]))
            kept += _keep_groups(more, decision.keep, group_size)
    return (kept or first), generated


def _keep_groups(samples: list[S], keep: torch.Tensor, group_size: int) -> list[S]:
    return [s for i, s in enumerate(samples) if keep[i // group_size]]


def _any_replica(flag: bool, group: Optional[dist.ProcessGroup]) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    total = torch.tensor([int(flag)], dtype=torch.long, device=platform.device())  # NCCL needs CUDA
    dist.all_reduce(total, group=_data_parallel_group(group))
    return bool(total.item())
