"""Reading and writing Hugging Face checkpoints one tensor at a time (safetensors)."""

from __future__ import annotations

import ctypes
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

HF_METADATA_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model",
    "added_tokens.json",
)


class HFWeights:
    """Lazy access to the tensors of an HF checkpoint directory (single file or sharded index)."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{index} is not a valid safetensors index: {err}") from err
        elif (self.dir / "model.safetensors").exists():
            weight_map = None
        else:
            raise FileNotFoundError(
                f"no model.safetensors or model.safetensors.index.json in {self.dir}; "
                "convert .bin checkpoints to safetensors first"
            )
        self._weight_map = weight_map
        self._handles: dict[str, object] = {}

    def _file_for(self, name: str) -> str:
        if self._weight_map is None:
            return "model.safetensors"
        if name not in self._weight_map:
            raise KeyError(f"tensor {name!r} is missing from {self.dir}/model.safetensors.index.json")
        return self._weight_map[name]

    def get(self, name: str) -> torch.Tensor:
        filename = self._file_for(name)
        if filename not in self._handles:
            try:
                self._handles[filename] = safe_open(str(self.dir / filename), framework="pt")
            except (SafetensorError, OSError) as err:
                raise ValueError(f"cannot read {self.dir / filename}: {err} (corrupt or truncated?)") from err
        handle = self._handles[filename]
        if name not in handle.keys():
            raise KeyError(f"tensor {name!r} is missing from {self.dir / filename}")
        try:
            return handle.get_tensor(name)
        except SafetensorError as err:
            raise ValueError(f"cannot read tensor {name!r} from {self.dir / filename}: {err}") from err


class ShardedSafetensorsWriter:
    """Writes tensors into safetensors shards of bounded size, plus the index transformers reads.

    Only the current shard is held in memory, so peak memory is about max_shard_bytes.
    """

    def __init__(self, out_dir: str | Path, max_shard_bytes: int = 2 * 1024**3):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._files: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        filename = f"part-{len(self._files):05d}.safetensors"
        save_file(self._pending, str(self.dir / filename), metadata={"format": "pt"})
        self._files.append((filename, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0
        _release_freed_memory()

    def close(self) -> None:
        if self._pending:
            self._flush()
        if len(self._files) == 1:
            (self.dir / self._files[0][0]).rename(self.dir / "model.safetensors")
            return
        weight_map = {}
        for i, (filename, names) in enumerate(self._files):
            final = f"model-{i + 1:05d}-of-{len(self._files):05d}.safetensors"
            (self.dir / filename).rename(self.dir / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after large frees), so the
    process's footprint follows the tensors alive now rather than the largest ever held."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def copy_hf_metadata(src: str | Path, dst: str | Path) -> None:
    """Copy config, generation config and tokenizer files (whichever exist)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in HF_METADATA_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
