"""HF <-> Megatron conversion: logits equal HF at several TP x PP, round trips are bit-exact."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from srpo_megatron.convert.__main__ import main as convert_main
from srpo_megatron.convert.verify import verify


def _convert(hf_dir, out, tp, pp):
    assert convert_main(["hf-to-mcore", "--hf", str(hf_dir), "--out", str(out), "--tp", str(tp), "--pp", str(pp)]) == 0
    return out


@pytest.fixture(scope="module")
def qwen_ckpt(tiny_qwen, tmp_path_factory):
    return _convert(tiny_qwen, tmp_path_factory.mktemp("qwen-mcore"), tp=2, pp=1)


@pytest.fixture(scope="module")
def tied_ckpt(tiny_qwen_tied, tmp_path_factory):
    return _convert(tiny_qwen_tied, tmp_path_factory.mktemp("tied-mcore"), tp=1, pp=2)


@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 1), (1, 2)])
def test_untied_logits_match_hf(tiny_qwen, qwen_ckpt, tp, pp):
    result = verify(tiny_qwen, qwen_ckpt, tp, pp)
    assert result["max_abs_logit_diff"] < 1e-5, result


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_tied_logits_match_hf(tiny_qwen_tied, tied_ckpt, tp, pp):
    result = verify(tiny_qwen_tied, tied_ckpt, tp, pp)
    assert result["max_abs_logit_diff"] < 1e-5, result


def _assert_same_weights(a_dir, b_files):
    original = load_file(str(a_dir / "model.safetensors"))
    roundtrip = {}
    for f in b_files:
        roundtrip.update(load_file(str(f)))
    assert sorted(original) == sorted(roundtrip)
    for name, tensor in original.items():
        assert roundtrip[name].dtype == tensor.dtype and torch.equal(roundtrip[name], tensor), name


@pytest.mark.parametrize("which", ["untied", "tied"])
def test_hf_mcore_hf_is_bit_exact(which, tiny_qwen, tiny_qwen_tied, qwen_ckpt, tied_ckpt, tmp_path):
    hf_dir, ckpt = (tiny_qwen, qwen_ckpt) if which == "untied" else (tiny_qwen_tied, tied_ckpt)
    # small shards so the index path (several files) is exercised
    assert convert_main(["mcore-to-hf", "--mcore", str(ckpt), "--out", str(tmp_path), "--max-shard-gb", "0.002"]) == 0
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    _assert_same_weights(hf_dir, [tmp_path / f for f in files])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path)  # loads as-is
    assert model.config.tie_word_embeddings == (which == "tied")
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template


def test_llama_converts_and_matches(tiny_llama, tmp_path):
    ckpt = _convert(tiny_llama, tmp_path / "mcore", tp=2, pp=1)
    assert verify(tiny_llama, ckpt, 2, 1)["max_abs_logit_diff"] < 1e-5


def test_verify_cli_fails_above_tolerance(tiny_qwen, qwen_ckpt):
    cmd = [sys.executable, "-m", "srpo_megatron.convert", "verify", "--hf", str(tiny_qwen),
           "--mcore", str(qwen_ckpt), "--tolerance", "1e-12"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is False


def test_bad_tp_fails_before_spawning(tiny_qwen, tmp_path, capsys):
    assert convert_main(["hf-to-mcore", "--hf", str(tiny_qwen), "--out", str(tmp_path), "--tp", "3"]) == 2
    assert "tensor_parallel=3 does not divide num_attention_heads=4" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_corrupt_hf_checkpoint_is_named(tiny_qwen, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="model.safetensors"):
        _convert(broken, tmp_path / "out", tp=1, pp=1)


def test_not_a_checkpoint_is_named(tmp_path, capsys):
    assert convert_main(["mcore-to-hf", "--mcore", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "srpo_model.json" in capsys.readouterr().err


@pytest.mark.parametrize("kind, tp_dim", [("copy", 0), ("copy", 1), ("qkv", 0), ("fc1", 0), ("vocab", 0)])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_unshard_inverts_shard(kind, tp_dim, tp):
    """What the weight sync rebuilds from gathered TP slices is exactly the full tensor."""
    from srpo_megatron.convert import layout

    rule = layout.ParamRule("x", ("y",), kind, tp_dim)
    full = torch.randn(16, 8)
    stacked = torch.stack([layout.shard(rule, full, rank, tp) for rank in range(tp)])
    assert torch.equal(layout.unshard(rule, stacked), full)
