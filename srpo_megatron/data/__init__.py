"""Data: the history-resampling sampler, DAPO's dynamic sampling (filter and refill loop), the stage scheduler."""

from srpo_megatron.data.sampler import (
    DynamicSamplingDecision,
    DynamicSamplingFilter,
    HistoryResamplingSampler,
    draw_informative,
    draw_once,
)
from srpo_megatron.data.stages import (
    SamplerFactory,
    StageConfig,
    StageScheduler,
    history_sampler_factory,
    mixture_counts,
)

__all__ = [
    "DynamicSamplingDecision",
    "DynamicSamplingFilter",
    "HistoryResamplingSampler",
    "SamplerFactory",
    "StageConfig",
    "StageScheduler",
    "history_sampler_factory",
    "draw_informative",
    "draw_once",
    "mixture_counts",
]
