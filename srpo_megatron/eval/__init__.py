"""Evaluation: AIME-style math avg@k and LiveCodeBench-style code pass@1 through vLLM.

Modules: `evaluate` (`EvalConfig`, `evaluate`), `__main__` (the CLI). What evaluation shares with
difficulty grading in `preprocess` lives below both: `rollout/sampling.py` (model directory, engine
options, k samples per problem) and `rewards/scoring.py` (`score_responses`: grade given
responses, no model). Nothing is imported here: `evaluate` pulls in vLLM.
"""
