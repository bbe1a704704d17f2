"""Training checkpoints: model, optimizer, sampler/scheduler, RNG and step; written atomically and
checked before they are trusted.

Layout: `<run_dir>/checkpoints/step_000010/` holds megatron's distributed checkpoint of the model
and optimizer (loadable at any TP/PP, and by `convert mcore-to-hf`), `trainer_state.json`, one
`rng_rank<r>.pt` per rank and a `COMPLETE` manifest (step, world size, the size of every file).
Every rank writes into `step_000010.tmp`; after a barrier rank 0 writes the manifest and renames the
directory into place. Only a directory named exactly `step_<digits>` with a manifest is a
checkpoint, so a crash at any point leaves at most a `.tmp` that is never loaded (the next save
removes it).

Resuming (`resume_checkpoint`) checks a checkpoint against its manifest on every rank, agrees on
the verdict across ranks, then loads it. With `--resume auto` a damaged checkpoint (a file missing,
truncated or unreadable) is named on stderr and skipped for the previous complete one. State that
is absent for this rank (its RNG file) is an error unless `ResumeRequest.fresh_rng`: the run would
not continue exactly. Sizes catch truncation and partial copies; checksums would mean reading every
byte of a multi-hundred-GB optimizer state on each resume, so bit rot is left to the loaders' errors.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from srpo_megatron.convert.mcore_io import CheckpointInfo, write_model_metadata
from srpo_megatron.process_lifetime import die_with_parent

if TYPE_CHECKING:
    from srpo_megatron.config import ModelConfig
    from srpo_megatron.data import StageScheduler

COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"step_(\d+)")
_RNG_FILE = re.compile(r"rng_rank\d+\.pt")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the checkpoint and the file."""


class DamagedCheckpoint(CheckpointError):
    """A file of the checkpoint is missing, truncated or unreadable: an older checkpoint may serve."""


class MissingState(CheckpointError):
    """The checkpoint has no state for part of this run (an RNG file): resuming would not be exact."""


@dataclass(frozen=True)
class ResumeRequest:
    """What `--resume` asked for."""

    source: str
    """"auto": the newest complete checkpoint of the run directory, skipping damaged ones (none
    at all is a fresh start); otherwise the path of one checkpoint, whose damage is an error."""
    fresh_rng: bool = False
    """Continue with fresh RNG where the checkpoint has no RNG file for this rank (e.g. resumed on
    more ranks than saved it); the continuation is then not exact."""


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The completed checkpoints, newest first: `step_<digits>` directories with a COMPLETE marker."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.fullmatch(p.name)) and (p / COMPLETE).is_file()]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    done = complete_checkpoints(run_dir)
    return done[0] if done else None


def trainer_state(step: int, rollouts_total: int, scheduler: StageScheduler) -> dict:
    """What `trainer_state.json` holds: the step, the rollouts generated since the run began (all
    replicas) and the stage scheduler's state."""
    return {"step": step, "rollouts_total": rollouts_total, "scheduler": scheduler.state_dict()}


def restore_trainer_state(state: dict, scheduler: StageScheduler) -> tuple[int, int]:
    """`trainer_state`'s (step, rollouts_total), its scheduler state loaded into `scheduler`."""
    step, rollouts_total = state["step"], state.get("rollouts_total", 0)  # older checkpoints: count from here
    scheduler.load_state_dict(state["scheduler"])
    return step, rollouts_total


def checkpoint_info(model: ModelConfig, vocab_size_padded: int) -> CheckpointInfo:
    """What a training checkpoint of `model` says about itself (its dtype, TP and PP)."""
    return CheckpointInfo(vocab_size_padded, model.dtype, model.tensor_parallel, model.pipeline_parallel)


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


def _checkpoint_queue_dies_with_this_rank() -> None:
    """megatron's dist_checkpointing starts a multiprocessing Manager (a server process) at its
    first save and caches the Manager's queue in a module global. Nothing stops that server when
    this rank is SIGKILLed: each `kill -9` of a run left a ~275 MB orphan. So we start the Manager
    first, as megatron would, but with a server that dies with this rank. The queue proxy keeps
    its Manager alive, as megatron's does."""
    import multiprocessing
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        manager.start(initializer=die_with_parent)
        filesystem_async._results_queue = manager.Queue()


def save_checkpoint(run_dir, step: int, model, optimizer, trainer_state: dict,
                    info: CheckpointInfo, hf_dir: str) -> Path:
    """Collective: write step `step` atomically and return its final path."""
    from megatron.core import dist_checkpointing

    rank = dist.get_rank()
    final = checkpoint_root(run_dir) / f"step_{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        for interrupted in final.parent.glob("step_*.tmp"):  # dead: the run lock admits one writer
            shutil.rmtree(interrupted, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    _checkpoint_queue_dies_with_this_rank()
    model_sd = model.sharded_state_dict()
    state = {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd)}
    dist_checkpointing.save(state, str(tmp))
    torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        write_model_metadata(tmp, info, hf_dir)
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state))
        _write_manifest(tmp, step, dist.get_world_size())
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    dist.barrier()
    return final


def _write_manifest(directory: Path, step: int, world_size: int) -> None:
    """The marker that makes `directory` a checkpoint: written last, it lists what the others wrote."""
    files = {p.relative_to(directory).as_posix(): p.stat().st_size
             for p in sorted(directory.rglob("*")) if p.is_file()}
    (directory / COMPLETE).write_text(json.dumps({"step": step, "world_size": world_size, "files": files}))


def load_checkpoint(path: str | Path, model, optimizer, fresh_rng: bool = False) -> dict:
    """Collective: restore model, optimizer and this rank's RNG from `path`; return the trainer state.

    Raises DamagedCheckpoint or MissingState (on every rank alike) naming the checkpoint and file."""
    path = Path(path)
    verdict = _agreed(_attempt(_check_files, path, dist.get_rank(), fresh_rng))
    if isinstance(verdict, CheckpointError):
        raise verdict
    state, rng_file = verdict
    rng = _agreed(_attempt(_load_states, path, model, optimizer, rng_file))
    if isinstance(rng, CheckpointError):
        raise rng
    if rng is None:  # this rank's own line: only it knows
        print(f"WARNING: checkpoint {path} has no RNG state for rank {dist.get_rank()}: continuing with "
              "fresh RNG (--resume-fresh-rng); this run will not reproduce an uninterrupted one",
              file=sys.stderr, flush=True)
    else:
        _set_rng_state(rng)
    return state


def _attempt(fn, *args):
    """fn's result, or the CheckpointError it raised (to be agreed on by every rank)."""
    try:
        return fn(*args)
    except CheckpointError as err:
        return err


def _check_files(path: Path, rank: int, fresh_rng: bool) -> tuple[dict, Path | None]:
    """This rank's files of `path` against its manifest: (trainer state, RNG file or None)."""
    manifest = _read_json(path / COMPLETE, path)
    if not (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)):
        raise DamagedCheckpoint(f"checkpoint {path}: {COMPLETE} is not a manifest (written by an older "
                                "version, or damaged)")
    for name, size in manifest["files"].items():
        file = path / name
        actual = file.stat().st_size if file.is_file() else None
        if actual is None and _RNG_FILE.fullmatch(name):
            continue  # missing state, not damage: its own rank decides below
        if actual != size:
            found = "is missing" if actual is None else f"has {actual} bytes"
            raise DamagedCheckpoint(f"checkpoint {path}: {name} {found}, the manifest says {size}")
    rng_file = path / f"rng_rank{rank}.pt"
    if not rng_file.is_file():
        if not fresh_rng:
            raise MissingState(
                f"checkpoint {path} has no {rng_file.name} (saved by {manifest.get('world_size')} ranks; "
                f"this is rank {rank}): the run cannot continue exactly. Resume on the saving layout, or "
                "pass --resume-fresh-rng to continue with fresh RNG on this rank")
        rng_file = None
    return _read_json(path / TRAINER_STATE, path), rng_file


def _read_json(file: Path, checkpoint: Path):
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise DamagedCheckpoint(f"checkpoint {checkpoint}: cannot read {file.name}: {err}") from err


def _load_states(path: Path, model, optimizer, rng_file: Path | None) -> dict | None:
    """Model and optimizer loaded in place; this rank's RNG state returned (set once all succeeded)."""
    from megatron.core import dist_checkpointing

    model_sd = model.sharded_state_dict()
    request = {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=True)}
    try:
        state = dist_checkpointing.load(request, str(path))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return None if rng_file is None else torch.load(rng_file, weights_only=False)
    except Exception as err:  # noqa: BLE001 - whatever the loaders raise, name the checkpoint
        raise DamagedCheckpoint(f"checkpoint {path}: loading its model/optimizer shards or "
                                f"{rng_file.name if rng_file else 'state'} failed: {type(err).__name__}: {err}") from err


def _agreed(result):
    """Every rank's result if all succeeded, else the first rank's error on every rank: a rank that
    raised alone would leave the others waiting in the next collective."""
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, result if isinstance(result, CheckpointError) else None)
    return next((e for e in errors if e is not None), result)


def resume_checkpoint(run_dir: str | Path, resume: str | ResumeRequest | None, model, optimizer) -> dict | None:
    """Collective: restore what `resume` asks for ("auto", a path, or a ResumeRequest); return the
    trainer state, or None for a fresh start (no resume asked, or "auto" with no checkpoint yet).

    "auto" skips damaged checkpoints, loudly, for the previous complete one; MissingState and a
    damaged explicit path raise."""
    if resume is None:
        return None
    request = resume if isinstance(resume, ResumeRequest) else ResumeRequest(str(resume))
    auto = request.source == "auto"
    candidates = complete_checkpoints(run_dir) if auto else [Path(request.source)]
    if not candidates:
        return None  # "auto" before the first save
    damaged = []
    for path in candidates:
        try:
            state = load_checkpoint(path, model, optimizer, request.fresh_rng)
        except DamagedCheckpoint as err:
            if not auto:
                raise
            damaged.append(str(err))
            _warn(f"{err}\n  -> skipping it for the previous complete checkpoint")
            continue
        if damaged:
            _warn(f"resumed from {path}, not from the newest checkpoint: {len(damaged)} newer one(s) damaged")
        return state
    raise DamagedCheckpoint(f"no usable checkpoint in {checkpoint_root(run_dir)}; every complete one is "
                            "damaged:\n  " + "\n  ".join(damaged) +
                            "\nRestore one, or move the checkpoints away to start afresh")


def _warn(message: str) -> None:
    if dist.get_rank() == 0:
        print(f"WARNING: {message}", file=sys.stderr, flush=True)
