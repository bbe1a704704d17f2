"""RolloutEngine against a real in-process vLLM CPU engine and HF transformers as the reference.

One shared engine for most tests (a build takes ~5-10 s on 2 cores); one test builds its own
first (other sampling settings), one runs in a subprocess. fp32 everywhere: vLLM and HF
log-probs agree to ~1e-6; the tolerance is 1e-4.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from srpo_megatron.rollout import Rollout, RolloutConfig, RolloutEngine
from srpo_megatron.rollout.engine import _engine_kwargs

REPO_ROOT = Path(__file__).resolve().parents[2]
SUFFIX = " Put the answer in \\boxed{}."
PROMPTS = [p + SUFFIX for p in ("What is 3 + 7?", "Solve the problem.", "Write a Python function that returns the sum.")]
"""As the trainer passes them: the instruction is already part of the text."""
G = 4
MAX_TOKENS = 8
# Digits are frequent in the tiny tokenizer's vocabulary: a near-uniform random model emits "5"
# within 8 tokens in about 2 of 3 samples, so the seeded batch holds both finish reasons.
STOP = "5"
ATOL = 1e-4


@pytest.fixture(scope="module")
def config() -> RolloutConfig:
    return RolloutConfig(
        temperature=1.0,
        top_p=1.0,
        max_response_tokens=MAX_TOKENS,
        stop=[STOP],
        seed=1234,
        n_samples_per_prompt=G,
        max_model_len=256,
        dtype="float32",
        enforce_eager=True,
        cpu_kvcache_space_gib=0.25,
        apply_chat_template=True,
    )


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, config: RolloutConfig) -> Iterator[RolloutEngine]:
    eng = RolloutEngine(tiny_model_dir, config)
    yield eng
    eng.shutdown()
    eng.shutdown()  # idempotent
    with pytest.raises(RuntimeError, match="shut down"):
        _ = eng.llm


@pytest.fixture(scope="module")
def rollouts(engine: RolloutEngine) -> list[Rollout]:
    return engine.generate(PROMPTS)


def _hf_model(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def hf_policy(tiny_model_dir: Path) -> torch.nn.Module:
    return _hf_model(tiny_model_dir)


@pytest.fixture(scope="module")
def hf_other(other_tiny_model_dir: Path) -> torch.nn.Module:
    return _hf_model(other_tiny_model_dir)


@torch.no_grad()
def hf_logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1, float32 [len - 1]."""
    tokens = torch.tensor([ids])
    logits = model(tokens).logits[0, :-1].float()  # [T-1, V]
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[0, 1:, None])[:, 0]


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"rollout\.top_p"):
        RolloutConfig(top_p=0.0)
    with pytest.raises(ValueError, match=r"rollout\.max_response_tokens .* max_model_len"):
        RolloutConfig(max_response_tokens=512, max_model_len=512)
    with pytest.raises(ValueError, match=r"rollout\.dtype .*'float32'"):
        RolloutConfig(dtype="fp32")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"rollout\.weight_transfer .*'nccl'"):
        RolloutConfig(weight_transfer="rdma")
    with pytest.raises(ValueError, match=r"rollout\.weight_transfer='ipc' needs CUDA"):
        _engine_kwargs("model", RolloutConfig(weight_transfer="ipc"), on_cpu=True)


def test_processed_logprobs_follow_temperature_and_top_k(
    tiny_model_dir: Path, config: RolloutConfig, hf_policy: torch.nn.Module
) -> None:
    """logprobs_mode="processed_logprobs": the log-prob under the distribution actually sampled
    from, log_softmax(top_k(logits / T)). Runs before the shared engine exists (one live engine
    per process); the shared engine is built after this one shut down, which must work."""
    temperature, top_k = 0.7, 20
    cfg = dataclasses.replace(config, temperature=temperature, top_k=top_k, stop=[])
    other = RolloutEngine(tiny_model_dir, cfg)
    try:
        out = other.generate(PROMPTS[:2], n=2)
    finally:
        other.shutdown()
    for r in out:
        ids = torch.tensor([r.prompt_token_ids + r.response_token_ids])
        with torch.no_grad():
            logits = hf_policy(ids).logits[0, len(r.prompt_token_ids) - 1 : -1].float() / temperature
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        expected = torch.log_softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
        expected = expected.gather(-1, torch.tensor(r.response_token_ids)[:, None])[:, 0]
        torch.testing.assert_close(r.logprobs, expected, atol=ATOL, rtol=0)


def test_groups_are_prompt_major_with_indices(rollouts: list[Rollout]) -> None:
    assert [(r.prompt_index, r.sample_index) for r in rollouts] == [
        (i, j) for i in range(len(PROMPTS)) for j in range(G)
    ]
    for r in rollouts:
        assert r.prompt_token_ids == rollouts[r.prompt_index * G].prompt_token_ids
        assert 1 <= len(r.response_token_ids) <= MAX_TOKENS
        assert r.logprobs.shape == (len(r.response_token_ids),) and r.logprobs.dtype == torch.float32
    assert len({tuple(rollouts[i * G].prompt_token_ids) for i in range(len(PROMPTS))}) == len(PROMPTS)


def test_n_overrides_group_size(engine: RolloutEngine) -> None:
    out = engine.generate(PROMPTS[:2], n=1)
    assert [(r.prompt_index, r.sample_index) for r in out] == [(0, 0), (1, 0)]
    with pytest.raises(ValueError, match="n must be >= 1"):
        engine.generate(PROMPTS[:1], n=0)


def test_chat_template_applied_to_the_text_as_given(engine: RolloutEngine, rollouts: list[Rollout]) -> None:
    tok = engine.tokenizer
    for i, prompt in enumerate(PROMPTS):
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        assert rendered == f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        assert rollouts[i * G].prompt_token_ids == tok.encode(rendered, add_special_tokens=False)


def test_token_id_prompts_are_used_verbatim(engine: RolloutEngine) -> None:
    ids = engine.tokenizer.encode("What is 3 + 7?", add_special_tokens=False)
    out = engine.generate([ids], n=2)
    assert [r.prompt_token_ids for r in out] == [ids, ids]


def test_finish_reasons(engine: RolloutEngine, rollouts: list[Rollout]) -> None:
    reasons = {r.finish_reason for r in rollouts}
    assert reasons == {"stop", "length"}, f"need both reasons in the batch, got {reasons}"
    for r in rollouts:
        if r.finish_reason == "length":
            assert len(r.response_token_ids) == MAX_TOKENS
            assert STOP not in r.response_text
        else:
            # the text is cut right after the stop string (kept: include_stop_str_in_output)
            assert r.response_text.endswith(STOP) and r.response_text.count(STOP) == 1
            assert STOP in engine.tokenizer.decode(r.response_token_ids[-1:])


def test_text_decoded_after_sampling_is_vllms_own(engine: RolloutEngine, monkeypatch) -> None:
    """Without stop strings vLLM does not detokenize while sampling; the text decoded once after
    is the one its detokenizer builds, and the flat log-probs are the per-token ones."""
    monkeypatch.setattr(engine, "config", dataclasses.replace(engine.config, stop=[], max_response_tokens=32))
    make = engine._sampling_params
    assert not make(G).detokenize

    def seeded(detokenize: bool):
        def params(n: int):
            p = make(n)
            p.seed, p.detokenize = 7, detokenize  # same samples in both runs
            return p
        return params

    monkeypatch.setattr(engine, "_sampling_params", seeded(False))
    ours = engine.generate(PROMPTS)
    monkeypatch.setattr(engine, "_sampling_params", seeded(True))
    theirs = engine.generate(PROMPTS)
    assert [r.response_token_ids for r in ours] == [r.response_token_ids for r in theirs]
    assert [r.response_text for r in ours] == [r.response_text for r in theirs]
    assert any(r.response_text for r in ours)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.logprobs, b.logprobs)
    # the random model never samples EOS here; a response ending in it loses it from its text,
    # as vLLM's detokenizer skips special tokens
    ids = ours[0].response_token_ids
    assert engine._decode([*ids, engine.tokenizer.eos_token_id]) == engine._decode(ids) == ours[0].response_text


def test_sampled_logprobs_match_hf(rollouts: list[Rollout], hf_policy: torch.nn.Module) -> None:
    for r in rollouts:
        ids = r.prompt_token_ids + r.response_token_ids
        expected = hf_logprobs(hf_policy, ids)[len(r.prompt_token_ids) - 1 :]
        torch.testing.assert_close(r.logprobs, expected, atol=ATOL, rtol=0)


def test_prompt_logprobs_match_hf(
    engine: RolloutEngine, rollouts: list[Rollout], hf_policy: torch.nn.Module
) -> None:
    sequences = [r.prompt_token_ids + r.response_token_ids for r in rollouts[::G]] + [[5, 17, 300, 42]]
    got = engine.prompt_logprobs(sequences)
    for seq, lp in zip(sequences, got):
        assert lp.shape == (len(seq) - 1,)
        torch.testing.assert_close(lp, hf_logprobs(hf_policy, seq), atol=ATOL, rtol=0)
    assert engine.prompt_logprobs([[7]])[0].shape == (0,)
    assert engine.prompt_logprobs([]) == [] and engine.generate([]) == []


def test_sleep_and_wake_up_are_noops_on_cpu(engine: RolloutEngine) -> None:
    engine.sleep(level=1)
    engine.wake_up()
    assert len(engine.generate(PROMPTS[:1], n=1)) == 1


def test_sleep_state_guards_weight_swaps(engine: RolloutEngine, monkeypatch) -> None:
    """The GPU protocol, with vLLM's sleep calls (no-ops on CPU) taken as supported: a swap into
    sleeping weights or a generate without the KV cache fails loudly instead of touching
    released memory; wake_up(["weights"]) is enough for a sync."""
    monkeypatch.setattr(engine, "_sleep_supported", lambda: True)
    weights: list[tuple[str, torch.Tensor]] = []
    engine.sleep(level=1)
    assert engine.asleep == {"weights", "kv_cache"}
    with pytest.raises(RuntimeError, match=r"weights are asleep; call wake_up\(\['weights'\]\)"):
        engine.load_weights(weights)
    engine.wake_up(["weights"])
    engine.load_weights(weights)  # an empty swap: vLLM keeps every module's weights
    with pytest.raises(RuntimeError, match="kv_cache are asleep"):
        engine.generate(PROMPTS[:1], n=1)
    engine.wake_up()
    assert engine.asleep == frozenset() and len(engine.generate(PROMPTS[:1], n=1)) == 1


def test_load_weights_swaps_model_in_place(
    engine: RolloutEngine,
    tiny_model_dir: Path,
    other_tiny_model_dir: Path,
    hf_policy: torch.nn.Module,
    hf_other: torch.nn.Module,
) -> None:
    seq = engine.tokenizer.encode("Let me think step by step. 3 + 7 = 10", add_special_tokens=False)
    ref_policy, ref_other = hf_logprobs(hf_policy, seq), hf_logprobs(hf_other, seq)
    assert (ref_policy - ref_other).abs().max() > 0.1  # the two models are distinguishable

    # a lazily consumed generator, as the weight sync streams buckets
    engine.load_weights((name, t) for name, t in _load_safetensors(other_tiny_model_dir).items())
    swapped = engine.prompt_logprobs([seq])[0]
    torch.testing.assert_close(swapped, ref_other, atol=ATOL, rtol=0)
    assert (swapped - ref_policy).abs().max() > 0.1

    # a second load in a row (back to the original weights, given as a list)
    engine.load_weights(list(_load_safetensors(tiny_model_dir).items()))
    torch.testing.assert_close(engine.prompt_logprobs([seq])[0], ref_policy, atol=ATOL, rtol=0)



def _as_the_sync_streams(weights: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensor shapes the weight sync yields: row-parallel weights as transposed views, gate
    and up as adjacent rows of one tensor (both taken without a copy by the CPU loader)."""
    for name, tensor in weights.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            yield name, tensor.t().contiguous().t()
        elif name.endswith("gate_proj.weight"):
            fused = torch.cat([tensor, weights[name.replace("gate_proj", "up_proj")]])
            yield name, fused[: tensor.shape[0]]
            yield name.replace("gate_proj", "up_proj"), fused[tensor.shape[0]:]
        elif not name.endswith("up_proj.weight"):
            yield name, tensor


def test_cpu_load_equals_vllms_own_reload(engine: RolloutEngine, tiny_model_dir: Path,
                                          other_tiny_model_dir: Path) -> None:
    """The CPU loader that replaces vLLM's generic reload (cpu_weight_loader.py) leaves the engine
    computing exactly what vLLM's reload leaves it computing, bit for bit, whichever tensor
    layouts the stream holds; the stream's tensors are left as they were."""
    assert engine._loads_directly  # else this test would compare vLLM's reload with itself
    seq = engine.tokenizer.encode("Let me think step by step. 3 + 7 = 10", add_special_tokens=False)
    other = _load_safetensors(other_tiny_model_dir)
    engine.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(other.items())})
    engine.llm.reset_prefix_cache()
    by_vllm = engine.prompt_logprobs([seq])[0]
    engine.load_weights(_load_safetensors(tiny_model_dir).items())
    streamed = list(_as_the_sync_streams(other))
    before = [t.clone() for _, t in streamed]
    engine.load_weights(streamed)
    assert torch.equal(engine.prompt_logprobs([seq])[0], by_vllm)
    assert all(torch.equal(t, b) for (_, t), b in zip(streamed, before))
    engine.load_weights(_load_safetensors(tiny_model_dir).items())


def test_cpu_load_rejects_a_bad_stream_naming_the_module(engine: RolloutEngine, tiny_model_dir: Path) -> None:
    weights = _load_safetensors(tiny_model_dir)
    o_proj = weights["model.layers.0.self_attn.o_proj.weight"]
    with pytest.raises(ValueError, match=r"RowParallelLinear\.weight is \(\d+, \d+\), the stream gave"):
        engine.load_weights([("model.layers.0.self_attn.o_proj.weight", o_proj[:, :-1])])
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(RuntimeError, match=r"left incomplete: \['model\.layers\.0\.self_attn\.qkv_proj\.weight'\]"):
        engine.load_weights([(q_proj, weights[q_proj])])

_TRAINER_OWNED_GROUP_SCRIPT = """
import sys, tempfile
import torch, torch.distributed as dist
from srpo_megatron.rollout import RolloutConfig, RolloutEngine
if __name__ == "__main__":
    init = "file://" + tempfile.mkdtemp() + "/store"
    dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)  # the trainer's group
    cfg = RolloutConfig(max_response_tokens=4, n_samples_per_prompt=2, max_model_len=128,
                        dtype="float32", enforce_eager=True, cpu_kvcache_space_gib=0.25)
    for _ in range(2):  # shutdown, then a fresh engine in the same process
        engine = RolloutEngine(sys.argv[1], cfg)
        assert len(engine.generate(["What is 3 + 7?"])) == 2
        engine.shutdown()
        assert dist.is_initialized(), "shutdown destroyed the trainer's process group"
        t = torch.ones(1)
        dist.all_reduce(t)
    print("TRAINER_GROUP_OK")
"""


def test_shutdown_keeps_a_trainer_owned_process_group(tiny_model_dir: Path) -> None:
    """In a fresh process (the test session must not own a process group), as under torchrun."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", _TRAINER_OWNED_GROUP_SCRIPT, str(tiny_model_dir)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert "TRAINER_GROUP_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
