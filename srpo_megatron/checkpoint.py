"""Training checkpoints: model, optimizer, sampler/scheduler, RNG and step, written atomically.

Layout: `<run_dir>/checkpoints/step_000010/` holds megatron's distributed checkpoint of the model
and optimizer (loadable at any TP/PP, and by `convert mcore-to-hf`), `trainer_state.json`, one
`rng_rank<r>.pt` per rank and a `COMPLETE` marker. Every rank writes into a temporary directory;
after a barrier rank 0 writes the marker and renames it into place, so a crash mid-write leaves
only a `.tmp` directory that `latest_checkpoint` never returns.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from srpo_megatron.convert.mcore_io import CheckpointInfo, write_model_metadata

COMPLETE = "COMPLETE"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    root = checkpoint_root(run_dir)
    done = [p for p in root.glob("step_*") if p.is_dir() and (p / COMPLETE).exists()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(run_dir, step: int, model, optimizer, trainer_state: dict,
                    info: CheckpointInfo, hf_dir: str) -> Path:
    """Collective: write step `step` atomically and return its final path."""
    from megatron.core import dist_checkpointing

    rank = dist.get_rank()
    final = checkpoint_root(run_dir) / f"step_{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd = model.sharded_state_dict()
    state = {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd)}
    dist_checkpointing.save(state, str(tmp))
    torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        write_model_metadata(tmp, info, hf_dir)
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state))
        (tmp / COMPLETE).write_text(str(step))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    dist.barrier()
    return final


def load_checkpoint(path: str | Path, model, optimizer) -> dict:
    """Collective: restore model, optimizer and this rank's RNG; return the trainer state."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    if not (path / COMPLETE).exists():
        raise ValueError(f"{path} is not a complete checkpoint (no {COMPLETE} marker)")
    model_sd = model.sharded_state_dict()
    request = {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=True)}
    state = dist_checkpointing.load(request, str(path))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng_file = path / f"rng_rank{dist.get_rank()}.pt"
    if rng_file.exists():  # resuming on a different world size keeps the fresh RNG
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((path / "trainer_state.json").read_text())
