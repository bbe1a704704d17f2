"""`python -m srpo_megatron.convert {hf-to-mcore,mcore-to-hf,verify}` (see --help)."""

from __future__ import annotations

import argparse
import json
import sys


def _resolve_dtype(hf_dir: str, requested: str) -> str:
    from transformers import AutoConfig

    if requested != "auto":
        return requested
    dtype = str(getattr(AutoConfig.from_pretrained(hf_dir), "dtype", None) or "float32")
    return "bfloat16" if "bfloat16" in dtype else "float32"


def hf_to_mcore(args: argparse.Namespace) -> None:
    from transformers import AutoConfig

    from srpo_megatron import platform
    from srpo_megatron.convert.hf_to_mcore import convert_rank
    from srpo_megatron.models import model_shape, validate_parallelism

    shape = model_shape(AutoConfig.from_pretrained(args.hf))  # fail before spawning anything
    validate_parallelism(shape, args.tp, args.pp)
    dtype = _resolve_dtype(args.hf, args.dtype)
    platform.spawn(convert_rank, args.tp * args.pp, args.hf, args.out, args.tp, args.pp, dtype)
    print(json.dumps({"out": args.out, "tp": args.tp, "pp": args.pp, "dtype": dtype}))


def mcore_to_hf(args: argparse.Namespace) -> None:
    from srpo_megatron.convert.mcore_to_hf import convert_mcore_to_hf

    out = convert_mcore_to_hf(args.mcore, args.out, max_shard_bytes=int(args.max_shard_gb * 1024**3))
    print(json.dumps({"out": str(out)}))


def verify(args: argparse.Namespace) -> int:
    from srpo_megatron.convert.verify import verify as run_verify

    result = run_verify(args.hf, args.mcore, args.tp, args.pp, args.batch, args.seq_len)
    result["tolerance"] = args.tolerance
    result["ok"] = result["max_abs_logit_diff"] <= args.tolerance
    print(json.dumps(result))
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srpo_megatron.convert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("hf-to-mcore", help="HF checkpoint -> megatron distributed checkpoint")
    p.add_argument("--hf", required=True, help="HF model directory (safetensors)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p = sub.add_parser("mcore-to-hf", help="megatron checkpoint -> HF directory")
    p.add_argument("--mcore", required=True, help="checkpoint directory written by hf-to-mcore or training")
    p.add_argument("--out", required=True, help="output HF directory")
    p.add_argument("--max-shard-gb", type=float, default=2.0, help="safetensors shard size")
    p = sub.add_parser("verify", help="compare logits of the HF model and the megatron checkpoint")
    p.add_argument("--hf", required=True)
    p.add_argument("--mcore", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |logit diff| allowed (fp32)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        if args.command == "hf-to-mcore":
            hf_to_mcore(args)
        elif args.command == "mcore-to-hf":
            mcore_to_hf(args)
        else:
            return verify(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
