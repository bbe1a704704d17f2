"""Rule-based rewards: math accuracy (math-verify), code accuracy (sandboxed tests), format terms.

Modules: `math` (answer extraction + math-verify in killable worker processes), `code` (program
extraction + test cases), `sandbox` (the process sandbox that runs untrusted programs), `format`
(think/answer format term, language-mixing penalty), `combine` (`RewardConfig` and the per-domain
batch scorer the trainer calls), `scoring` (pass rates of given responses, for evaluation and
difficulty grading). They are not imported here: `math` imports sympy and `combine`
imports the trainer's registries, and the grading workers should import only what they use.
"""

from srpo_megatron.rewards.types import RewardResult

__all__ = ["RewardResult"]
