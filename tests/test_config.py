"""Run configs: the examples load; malformed configs fail naming the field."""

import pytest

from srpo_megatron.config import load_config


@pytest.fixture
def model_dir(tmp_path):
    """Stands in for the examples' checkpoints (cluster paths): model.hf_path must be an HF directory."""
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize("path", ["examples/tiny_cpu/config.yaml", "examples/qwen2.5-7b/train.yaml",
                                  "examples/qwen2.5-32b/train.yaml"])
def test_example_configs_load(path, model_dir):
    config = load_config(path, [f"model.hf_path={model_dir}"])
    assert [s.name for s in config.stages][0] == "stage1_math"
    assert config.stages[0].mixture == {"math": 1.0} and "code" in config.stages[-1].mixture


def test_published_srpo_hyperparameters_in_real_configs(model_dir):
    config = load_config("examples/qwen2.5-32b/train.yaml", [f"model.hf_path={model_dir}"])
    assert config.loss.kl_coef == 0.0 and config.loss.eps_low == config.loss.eps_high == 0.2
    assert (config.optimizer.adam_beta1, config.optimizer.adam_beta2, config.optimizer.lr) == (0.9, 0.95, 1e-6)
    assert config.data.prompts_per_step == 256 and config.rollout.n_samples_per_prompt == 32


def test_overrides_apply(model_dir):
    config = load_config("examples/tiny_cpu/config.yaml",
                         [f"model.hf_path={model_dir}", "training.steps=3", "optimizer.lr=0.5"])
    assert config.training.steps == 3 and config.optimizer.lr == 0.5


@pytest.mark.parametrize("name", ["no-such-model", "empty-dir"])
def test_missing_model_dir_names_the_field(tmp_path, name):
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(ValueError, match=rf"model.hf_path='.*{name}' is not an HF model directory \(no config.json"):
        load_config("examples/tiny_cpu/config.yaml", [f"model.hf_path={tmp_path / name}"])


@pytest.mark.parametrize("override, message", [
    ("training.stepz=3", r"training.stepz: unknown field; valid fields: .*steps"),
    ("optimizer.lr=-1", r"optimizer.lr must be > 0"),
    ("model.dtype=float16", r"model.dtype must be 'float32' or 'bfloat16'"),
    ("rollout.top_p=0", r"top_p"),
    ("rollout.tensor_parallel_size=2", r"rollout.tensor_parallel_size=2 must divide"),
    ("data.code=[]", r"stages mix domains \['code'\] but data has no files"),
    ("training.sampler=grpo", r"training.sampler must be one of history_resampling, uniform, dynamic_sampling"),
    ("training.history_resampling=false", r"training.history_resampling: unknown field; valid fields: .*sampler"),
])
def test_bad_values_name_the_field(override, message, model_dir):
    with pytest.raises(ValueError, match=message):
        load_config("examples/tiny_cpu/config.yaml", [f"model.hf_path={model_dir}", override])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_data_row_without_answer_names_file_and_row(tmp_path):
    from srpo_megatron.data.dataset import load_rows

    path = tmp_path / "math.jsonl"
    path.write_text('{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?"}\n')
    with pytest.raises(ValueError, match=r"math.jsonl row 1: a math row needs 'answer'"):
        load_rows([str(path)], "math")


def test_every_section_is_frozen(model_dir):
    """A run's config cannot drift after validation: no section, the rollout's included, takes assignment."""
    import dataclasses

    config = load_config("examples/tiny_cpu/config.yaml", [f"model.hf_path={model_dir}"])
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        for item in value if isinstance(value, list) else [value]:
            first = dataclasses.fields(item)[0].name
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(item, first, getattr(item, first))


def test_training_and_evaluation_share_one_default_instruction(model_dir):
    """Train and evaluate with the same instruction unless a config says otherwise."""
    from srpo_megatron.eval.evaluate import EvalConfig
    from srpo_megatron.rollout.sampling import DEFAULT_INSTRUCTIONS

    config = load_config("examples/qwen2.5-7b/train.yaml", [f"model.hf_path={model_dir}"])
    assert config.data.math_instruction == EvalConfig(model="m", data="d", domain="math").suffix == DEFAULT_INSTRUCTIONS["math"]
    assert config.data.code_instruction == EvalConfig(model="m", data="d", domain="code").suffix == DEFAULT_INSTRUCTIONS["code"]
