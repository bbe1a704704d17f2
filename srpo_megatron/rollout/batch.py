"""One step's rollouts: the scored `Sample`s, and the typed `RolloutBatch` the training phases pass on.

The batch is torchtune's `GRPOTrajectory` idea in megatron's terms: built once per step from the
samples, then each phase returns a copy with its result filled in (`dataclasses.replace`), so no
phase adds keys to a dict and every field has one writer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from srpo_megatron.algorithms.policy_loss import kl_k3
from srpo_megatron.metrics import SampleRecord, UpdateRecord


@dataclass(frozen=True)
class Sample:
    """One rollout with its score: what every later phase reads."""

    domain: str
    row_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float]
    truncated: bool
    reward: float
    accuracy: float
    reflective: bool
    revisited: bool
    """The stage's sampler recorded this prompt in an earlier epoch (asked when it was drawn)."""
    scored: bool = True
    """False when the reward could not be judged (sandbox failure): its group gets no advantage."""

    def metrics_record(self) -> SampleRecord:
        return SampleRecord(self.domain, self.reward, self.accuracy, len(self.response_ids), self.truncated,
                            self.reflective, self.revisited, self.scored)


@dataclass(frozen=True)
class RolloutBatch:
    """One step's rollouts as right-padded tensors, G consecutive rows per prompt group.

    Device rule: every tensor of the batch lives in host memory, always (checked on
    construction). The forward step moves each micro-batch to the device when it runs
    (`models.forward.run_pipeline`) and log-probs come back to the host (`compute_logprobs`), so
    phases combine fields without moving them, and no second copy of the batch sits on the GPU.

    Rows: the `num_samples` samples, then empty rows (all-False mask, zero advantage) up to a
    whole number of micro-batches per optimizer update.
    """

    tokens: torch.Tensor  # [N, T] long: prompt + response, right-padded with 0
    mask: torch.Tensor  # [N, T] bool: the response tokens
    rollout_logprobs: torch.Tensor  # [N, T] vLLM's log-probs of the sampled tokens, 0 off the mask
    rewards: torch.Tensor  # [n] float32
    truncated: torch.Tensor  # [n] bool: cut at the length limit
    unscored: torch.Tensor  # [n] bool: the reward could not be judged
    group_size: int
    advantages: torch.Tensor | None = None  # [N], the `advantages` phase
    old_logprobs: torch.Tensor | None = None  # [N, T], the `old_logprobs` phase (last pipeline stage)
    ref_logprobs: torch.Tensor | None = None  # [N, T], the `ref_logprobs` phase (last pipeline stage)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, torch.Tensor) and value.device.type != "cpu":
                raise ValueError(f"RolloutBatch.{field.name} is on {value.device}; the batch lives on the host "
                                 "and micro-batches move to the device inside the forward step")
        if self.rewards.numel() % self.group_size:
            raise ValueError(f"RolloutBatch: {self.rewards.numel()} samples are not whole groups of "
                             f"group_size={self.group_size}")

    @classmethod
    def pack(cls, samples: Sequence[Sample], group_size: int, rows_multiple: int) -> RolloutBatch:
        """Right-pad `samples` into [N, T] tensors, N rounded up to a multiple of `rows_multiple`."""
        n = -(-len(samples) // rows_multiple) * rows_multiple
        length = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
        tokens = torch.zeros(n, length, dtype=torch.long)
        mask = torch.zeros(n, length, dtype=torch.bool)
        rollout_logprobs = torch.zeros(n, length)
        for row, s in enumerate(samples):
            p, r = len(s.prompt_ids), len(s.response_ids)
            tokens[row, : p + r] = torch.tensor(s.prompt_ids + s.response_ids)
            mask[row, p: p + r] = True
            rollout_logprobs[row, p: p + r] = torch.tensor(s.rollout_logprobs)
        return cls(tokens, mask, rollout_logprobs, torch.tensor([s.reward for s in samples], dtype=torch.float32),
                   torch.tensor([s.truncated for s in samples]), torch.tensor([not s.scored for s in samples]),
                   group_size)

    @property
    def num_samples(self) -> int:
        return self.rewards.numel()

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]

    def with_advantages(self, sample_advantages: torch.Tensor) -> RolloutBatch:
        """The batch with per-sample advantages [n], padding rows at 0."""
        advantages = torch.zeros(self.num_rows)
        advantages[: self.num_samples] = sample_advantages
        return dataclasses.replace(self, advantages=advantages)

    def row_lengths(self) -> torch.Tensor:
        """[N] long: the columns each row needs, through its last response token (attention is
        causal, so the padding after it cannot change an earlier log-prob); 1 for empty rows."""
        last = self.tokens.shape[1] - self.mask.flip(1).to(torch.int8).argmax(dim=1)  # [N]
        return torch.where(self.mask.any(dim=1), last, torch.ones_like(last))

    def plan(self, rows: range, size: int, max_tokens: int = 0) -> list[torch.Tensor]:
        """Row indices of each micro-batch of `rows`: `size` consecutive rows (max_tokens 0), or,
        under a token budget, rows sorted longest first and grouped while rows x longest row
        fits (a row over the budget goes alone). Grouping cannot change the loss: it is summed
        per token and divided by the update's global count (`policy_loss`)."""
        if not max_tokens:
            return [torch.arange(start, min(start + size, rows.stop)) for start in range(rows.start, rows.stop, size)]
        lengths = self.row_lengths()[rows.start: rows.stop]  # [n]
        order = torch.argsort(lengths, descending=True, stable=True)
        groups, start = [], 0
        while start < len(order):
            fits = max(1, max_tokens // int(lengths[order[start]]))  # rows at the group's longest length
            groups.append(order[start: start + fits] + rows.start)
            start += fits
        return groups

    def gather(self, plan: Sequence[torch.Tensor], fields: Sequence[str], packed: bool = False,
               share_prompts: bool = False) -> list[dict[str, torch.Tensor | int]]:
        """The named fields that are set, per micro-batch of `plan`, [b, T] ones cut to the
        micro-batch's longest row: no compute on padding beyond it. Each micro-batch also holds
        `logits_from` (int): the last prompt position before its first response token, from which
        on the model computes logits (`models.forward.run_pipeline`): no output layer on the
        prompt positions, whose log-probs nothing reads. `packed`: each also holds
        `packed_lengths` [b], its rows' `row_lengths`, and runs as one THD pack: no compute on
        padding at all. `share_prompts` (with `packed`): each also holds `response_starts` [b],
        and rows with the same tokens before it compute them once."""
        present = [name for name in fields if getattr(self, name) is not None]
        lengths = self.row_lengths()
        has_response = self.mask.any(dim=1)  # [N]
        first_response = self.mask.to(torch.int8).argmax(dim=1)  # [N]
        micro = []
        for rows in plan:
            width = int(lengths[rows].max())
            picked = {name: getattr(self, name)[rows] for name in present}
            starts = first_response[rows][has_response[rows]]
            logits_from = int(starts.min()) - 1 if starts.numel() else 0
            micro.append({name: t[:, :width] if t.dim() == 2 else t for name, t in picked.items()}
                         | {"logits_from": max(logits_from, 0)} | ({"packed_lengths": lengths[rows]} if packed else {})
                         | ({"response_starts": first_response[rows]} if packed and share_prompts else {}))
        return micro

    def micro_batches(self, rows: range, size: int, fields: Sequence[str],
                      max_tokens: int = 0) -> list[dict[str, torch.Tensor | int]]:
        """`gather` over `plan(rows, size, max_tokens)`."""
        return self.gather(self.plan(rows, size, max_tokens), fields)

    def scatter(self, plan: Sequence[torch.Tensor], parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-micro-batch [b, t] results of `gather(plan, ...)` back into one [N, T] tensor, 0
        on the columns and rows the plan did not feed."""
        out = torch.zeros(self.tokens.shape, dtype=parts[0].dtype)
        for rows, part in zip(plan, parts):
            out[rows, : part.shape[1]] = part.to(out.device)
        return out

    def padding(self, plan: Sequence[torch.Tensor], packed: bool = False) -> tuple[int, int]:
        """(padding positions, all positions) that `gather(plan, ..., packed)` feeds the model; the
        real ones are the rows' needed columns (`row_lengths`, 0 for rows without a response)."""
        lengths = self.row_lengths()  # [N]
        needed = torch.where(self.mask.any(dim=1), lengths, 0)  # [N]
        fed = sum(int(lengths[rows].sum()) if packed else len(rows) * int(lengths[rows].max()) for rows in plan)
        return fed - sum(int(needed[rows].sum()) for rows in plan), fed

    def zero_groups(self) -> tuple[bool, ...]:
        """Per prompt group: every advantage is zero (no reward variance, only truncated outliers,
        or an unscored rollout)."""
        return tuple((self.advantages[: self.num_samples].view(-1, self.group_size) == 0).all(dim=1).tolist())

    def update_record(self, loss_metrics: Mapping[str, float], micro_batch_size: int) -> UpdateRecord:
        """This replica's update statistics; on its last pipeline stage, which has the log-probs."""
        diff = (self.old_logprobs - self.rollout_logprobs).abs()[self.mask]
        kl_sum = None
        if self.ref_logprobs is not None:
            kl_sum = kl_k3(self.old_logprobs, self.ref_logprobs)[self.mask].sum().item()
        return UpdateRecord(loss_metrics={k: float(v) for k, v in loss_metrics.items()},
                            micro_batches=self.num_rows // micro_batch_size,
                            response_tokens=int(self.mask.sum()),
                            logprob_diff_max=diff.max().item() if diff.numel() else 0.0,
                            logprob_diff_sum=diff.sum().item(), kl_sum=kl_sum)
