"""Rollout generation with vLLM (engine) and Megatron -> vLLM weight sync."""

from srpo_megatron.rollout.engine import RolloutEngine
from srpo_megatron.rollout.types import FinishReason, Rollout, RolloutConfig

__all__ = ["FinishReason", "Rollout", "RolloutConfig", "RolloutEngine"]
