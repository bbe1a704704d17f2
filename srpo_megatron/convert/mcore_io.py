"""Megatron distributed checkpoints of a model: save, load at any TP/PP, and their metadata.

A model checkpoint directory holds megatron's `dist_checkpointing` files (TP/PP-agnostic), a
`srpo_model.json` with what is needed to rebuild the model, and `hf/` with the HF config and
tokenizer files so `mcore-to-hf` can write a loadable HF directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from srpo_megatron.convert.hf_io import copy_hf_metadata

METADATA_FILE = "srpo_model.json"
HF_SUBDIR = "hf"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a model checkpoint says about itself."""

    vocab_size_padded: int
    dtype: str
    tensor_parallel: int  # the TP it was written at (loading at another TP reshards)
    pipeline_parallel: int

    def write(self, ckpt_dir: Path) -> None:
        (ckpt_dir / METADATA_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, ckpt_dir: str | Path) -> "CheckpointInfo":
        path = Path(ckpt_dir) / METADATA_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: {ckpt_dir} is not an srpo-megatron model checkpoint")
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path} is malformed: {err}") from err


def hf_config_dir(ckpt_dir: str | Path) -> Path:
    return Path(ckpt_dir) / HF_SUBDIR


def write_model_metadata(ckpt_dir: Path, info: CheckpointInfo, hf_dir: str | Path) -> None:
    """What makes a directory of megatron shards a model checkpoint we can rebuild and export."""
    info.write(ckpt_dir)
    copy_hf_metadata(hf_dir, hf_config_dir(ckpt_dir))


def save_model(model, ckpt_dir: str | Path, info: CheckpointInfo, hf_dir: str | Path) -> None:
    """Collective over all ranks: write the model's shards, then rank 0 writes the metadata."""
    from megatron.core import dist_checkpointing

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(model.sharded_state_dict(), str(ckpt_dir))
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        write_model_metadata(ckpt_dir, info, hf_dir)


def load_model(model, ckpt_dir: str | Path) -> None:
    """Collective: load a model checkpoint written at any TP/PP into this rank's model shard."""
    from megatron.core import dist_checkpointing

    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "metadata.json").exists():
        raise FileNotFoundError(f"{ckpt_dir} has no metadata.json: not a megatron distributed checkpoint")
    try:
        state = dist_checkpointing.load(model.sharded_state_dict(), str(ckpt_dir))
    except Exception as err:  # megatron/torch raise many types for a damaged checkpoint
        raise ValueError(f"cannot load the model checkpoint {ckpt_dir}: {err}") from err
    model.load_state_dict(state)
