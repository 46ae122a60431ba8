"""The policy network moved to `safe.models.policy` (it lives with the other models).

Re-exported here only for the importers not yet updated (safe/rl/reward.py, safe/training/stage_b.py,
pipelines/stage_b.py); delete this module once they import `safe.models.policy`.
"""

from safe.models.policy import AudioPolicyNetwork, check_token_budgets, masked_entropy, save_policy

__all__ = ["AudioPolicyNetwork", "check_token_budgets", "masked_entropy", "save_policy"]
