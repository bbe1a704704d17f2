"""Evaluation: AIME-style math avg@k and LiveCodeBench-style code pass@1 through vLLM.

Modules: `scoring` (`score_responses`: grade given responses, no model), `sampling` (model directory,
engine options, k samples per problem), `evaluate` (`EvalConfig`, `evaluate`), `__main__` (the CLI).
Nothing is imported here: `scoring` pulls in torch through the reward registry, `evaluate` vLLM.
"""
