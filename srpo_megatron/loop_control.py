"""The training loop's clock and brakes: `PhaseTimer` (seconds per named phase of a step),
`StopSignal` (SIGTERM, agreed on by every rank) and `due` (every-N-steps schedules)."""

from __future__ import annotations

import contextlib
import signal
import time

import torch
import torch.distributed as dist

from srpo_megatron import platform


class PhaseTimer:
    """Wall-clock seconds per named phase of one step; a phase run again (DAPO's draws) adds up.

    Host clocks: phases that end by reading results on the host (log-probs, loss metrics, the
    gradient norm) include their GPU kernels."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def run(self, name: str, fn, *args):
        with self(name):
            return fn(*args)

    def metrics(self) -> dict[str, float]:
        """The phase times, and `t_train`: the log-prob and update phases (what plots and run
        summaries read as training time)."""
        train = sum(self.seconds.get(k, 0.0) for k in ("t_old_logprobs", "t_ref_logprobs", "t_update"))
        return {k: round(v, 4) for k, v in (self.seconds | {"t_train": train}).items()}


class StopSignal:
    """SIGTERM (Slurm preemption) as a flag the ranks agree on after a step: save, then exit."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum, frame) -> None:
        self.requested = True  # only a flag: torchrun may signal twice

    def agreed(self) -> bool:
        flag = torch.tensor([float(self.requested)], device=platform.device())  # NCCL needs CUDA
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.requested = bool(flag.item())
        return self.requested


def due(every: int, step: int) -> bool:
    """Whether an every-`every`-steps event falls after `step` (`every` 0: never)."""
    return bool(every) and step % every == 0
