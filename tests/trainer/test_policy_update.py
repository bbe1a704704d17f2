"""One policy update moves log-probs the way the advantages say."""

import dataclasses

import torch

from srpo_megatron import platform


def direction_rank(hf_dir: str, out_file: str) -> None:
    from transformers import AutoConfig

    from srpo_megatron.algorithms import PolicyLossConfig
    from srpo_megatron.config import ModelConfig, OptimizerConfig
    from srpo_megatron.models import model_shape, padded_vocab_size
    from srpo_megatron.models.forward import compute_logprobs
    from srpo_megatron.policy import UpdateSettings, build_policy, update_policy
    from srpo_megatron.rollout.batch import RolloutBatch

    platform.init_distributed(1, 1, seed=0)
    shape = model_shape(AutoConfig.from_pretrained(hf_dir))
    vocab = padded_vocab_size(shape.vocab_size, 1)
    model, optimizer = build_policy(shape, ModelConfig(hf_path=hf_dir), OptimizerConfig(lr=1e-4), vocab)
    tokens = torch.randint(0, shape.vocab_size, (4, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[:, 8:] = True
    no = torch.zeros(4, dtype=torch.bool)  # no sample truncated or unscored
    batch = RolloutBatch(tokens, mask, torch.zeros(4, 16), torch.zeros(4), no, no, group_size=2,
                         advantages=torch.tensor([1.0, -1.0, 1.0, -1.0]))

    def sequence_logprobs():
        (lp,) = compute_logprobs(model.module, batch.micro_batches(range(4), 4, ("tokens",)), shape.vocab_size)
        return lp, (lp * mask).sum(dim=1)

    old, before = sequence_logprobs()
    batch = dataclasses.replace(batch, old_logprobs=old)
    settings = UpdateSettings(1, 4, 1e-4, shape.vocab_size, 1.0, PolicyLossConfig())
    update_policy(model, optimizer, batch, settings)
    _, after = sequence_logprobs()
    torch.save({"before": before, "after": after}, out_file)


def test_update_raises_positive_and_lowers_negative_advantage_sequences(tiny_qwen, tmp_path):
    platform.spawn(direction_rank, 1, str(tiny_qwen), str(tmp_path / "out.pt"))
    result = torch.load(tmp_path / "out.pt")
    change = result["after"] - result["before"]  # [4]
    assert change[0] > 0 and change[2] > 0, change
    assert change[1] < 0 and change[3] < 0, change
