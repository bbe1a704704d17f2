"""Step metrics: per-replica records, their reduction over every data-parallel replica, and the
sinks (one JSON line per step, TensorBoard, optionally W&B).

Each data-parallel replica contributes one `ReplicaRecord` per step; the trainer gathers them in
a single collective and `reduce_step` turns the list into the step's metrics, so every metric
describes the whole step, not the replica that happens to log it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REFLECTION = re.compile(r"\b(wait|let me check|let me verify|verify|double[- ]check|re-?check|"
                        r"hmm|on second thought)\b", re.IGNORECASE)


def is_reflective(text: str) -> bool:
    """Whether a response shows self-verification ("wait", "let me check", ...), SRPO's signal."""
    return bool(REFLECTION.search(text))


def tokens_per_s(num_tokens: int, seconds: float) -> float:
    return num_tokens / seconds if seconds > 0 else 0.0


@dataclass(frozen=True)
class SampleRecord:
    """One rollout the step trained on, as the metrics see it."""

    domain: str
    reward: float
    accuracy: float
    response_len: int
    truncated: bool
    reflective: bool
    revisited: bool
    """Its prompt was served and recorded by the current stage's sampler in an earlier epoch."""
    scored: bool = True
    """False when its reward could not be judged (sandbox failure after retries); its group
    trained with zero advantage and it is left out of the per-rollout means."""


@dataclass(frozen=True)
class UpdateRecord:
    """One replica's policy-update statistics, from one rank of its last pipeline stage."""

    loss_metrics: Mapping[str, float]
    """`update_policy`'s metrics: shares of the global mean (`LOSS_SHARE_KEYS`) or means over
    this replica's micro-batches."""

    micro_batches: int
    """Micro-batches behind the micro-batch means, their weight across replicas."""

    response_tokens: int
    """Response tokens of the batch, the denominator of the token sums below."""

    logprob_diff_max: float
    """max |old log-prob (Megatron) - rollout log-prob (vLLM)| over response tokens (0 if none)."""

    logprob_diff_sum: float
    """The same differences summed, for the mean over every replica's tokens."""

    kl_sum: float | None
    """Sum over response tokens of k3(reference || policy); None without a reference model."""


@dataclass(frozen=True)
class ReplicaRecord:
    """What one data-parallel replica contributes to a step's metrics."""

    samples: tuple[SampleRecord, ...]
    """The rollouts trained on, G consecutive per prompt group."""

    zero_groups: tuple[bool, ...]
    """Per trained prompt group: every advantage is zero (no learning signal)."""

    generated: int
    """Rollouts generated this step, including any that DAPO dynamic sampling dropped."""

    update: UpdateRecord


LOSS_SHARE_KEYS = frozenset({"pg_loss", "kl_loss", "loss"})
"""Loss metrics that are each replica's share of the global mean (`policy_loss`): they add up
over replicas. Every other loss metric is a micro-batch mean and averages."""



def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _mean_or_none(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def sample_metrics(samples: Sequence[SampleRecord]) -> dict:
    """Means over rollouts: reward, accuracy (overall, per domain, on revisited prompts),
    length and behaviour. A subset with no rollouts this step gives None, not 0. `unscored`
    counts the rollouts that could not be judged; the means leave them out."""
    unscored = sum(not s.scored for s in samples)
    samples = [s for s in samples if s.scored] if unscored else samples
    revisited = [s for s in samples if s.revisited]
    metrics = {
        "unscored": unscored,
        "reward_mean": _mean([s.reward for s in samples]),
        "accuracy": _mean([s.accuracy for s in samples]),
        "response_len_mean": _mean([s.response_len for s in samples]),
        "truncated_frac": _mean([float(s.truncated) for s in samples]),
        "reflection_rate": _mean([float(s.reflective) for s in samples]),
        "accuracy/revisited": _mean_or_none([s.accuracy for s in revisited]),
        "revisited_frac": len(revisited) / len(samples) if samples else 0.0,
    }
    for domain in ("math", "code"):
        metrics[f"accuracy/{domain}"] = _mean_or_none([s.accuracy for s in samples if s.domain == domain])
    return metrics


def group_metrics(zero_groups: Sequence[bool]) -> dict:
    """How many prompt groups carry a learning signal (a non-zero advantage)."""
    zero = sum(bool(z) for z in zero_groups)
    return {"groups": len(zero_groups), "informative_groups": len(zero_groups) - zero,
            "zero_adv_frac": zero / len(zero_groups) if zero_groups else 0.0}


def update_metrics(updates: Sequence[UpdateRecord]) -> dict:
    """Loss shares summed, micro-batch means weighted by micro-batches, token statistics over
    every replica's tokens; `kl` is 0.0 without a reference model."""
    if not updates:
        return {}
    micro = sum(u.micro_batches for u in updates)
    keys = list(updates[0].loss_metrics)
    metrics = {}
    for key in keys:
        values = [(u.loss_metrics[key], u.micro_batches) for u in updates]
        metrics[key] = (sum(v for v, _ in values) if key in LOSS_SHARE_KEYS
                        else sum(v * n for v, n in values) / max(micro, 1))
    tokens = max(sum(u.response_tokens for u in updates), 1)
    metrics["logprob_diff"] = max(u.logprob_diff_max for u in updates)
    metrics["logprob_diff_mean"] = sum(u.logprob_diff_sum for u in updates) / tokens
    metrics["kl"] = sum(u.kl_sum or 0.0 for u in updates) / tokens
    return metrics


def reduce_step(replicas: Sequence[ReplicaRecord], step_seconds: float) -> dict:
    """The step's metrics from the records of ALL data-parallel replicas (one each).

    Keys: `sample_metrics`, `group_metrics`, `update_metrics`, `rollouts` (generated this step)
    and `tokens_per_s` (response tokens trained on per second of the step).
    """
    samples = [s for r in replicas for s in r.samples]
    metrics = sample_metrics(samples)
    metrics |= group_metrics([z for r in replicas for z in r.zero_groups])
    metrics |= update_metrics([r.update for r in replicas])
    metrics["rollouts"] = sum(r.generated for r in replicas)
    metrics["tokens_per_s"] = tokens_per_s(sum(s.response_len for s in samples), step_seconds)
    return metrics


class MetricsLogger:
    """Writes step metrics to `<run_dir>/metrics.jsonl` and TensorBoard (rank 0 only).

    Each step appears once, also across resumes: the first step a process logs is where it
    continues, so records of that step and later ones (written after the checkpoint it resumed
    from, then lost with the crash) are dropped from the JSONL, along with a line torn by the
    crash, and TensorBoard is told to purge its events from that step on.
    """

    def __init__(self, run_dir: str | Path, use_wandb: bool = False, project: str = "srpo"):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = None
        self._tb = None
        self._wandb = None
        if use_wandb:
            import wandb

            self._wandb = wandb.init(project=project, dir=str(self.dir))

    def log(self, metrics: dict) -> None:
        step = metrics["step"]
        if self._jsonl is None:
            self._open(step)
        self._jsonl.write(json.dumps(metrics) + "\n")
        self._jsonl.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "step":
                self._tb.add_scalar(key, value, step)
        self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def _open(self, first_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        path = self.dir / "metrics.jsonl"
        kept = [line for line in _jsonl_lines(path) if line[1] < first_step]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(text for text, _ in kept))
        tmp.replace(path)  # atomic: a crash here leaves the old file or the new one
        self._jsonl = open(path, "a")  # noqa: SIM115 - lives as long as the logger
        self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=first_step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._tb.close()


def _jsonl_lines(path: Path) -> list[tuple[str, int]]:
    """(line, step) of every complete record in a metrics.jsonl (none if it does not exist)."""
    if not path.exists():
        return []
    records = []
    for text in path.read_text().splitlines(keepends=True):
        try:
            step = json.loads(text)["step"]
        except (ValueError, KeyError, TypeError):
            continue  # the torn last line of a killed run
        records.append((text if text.endswith("\n") else text + "\n", step))
    return records
