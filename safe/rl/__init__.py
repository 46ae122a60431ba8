"""The RL controller: the budget policy, its reward and the outcome tables Stage B learns from."""

from safe.models.policy import AudioPolicyNetwork, load_policy, save_policy
from safe.rl.reward import OutcomeTable, OutcomeTableError, RewardConfig, evaluate_actions, reward_terms

__all__ = ["AudioPolicyNetwork", "OutcomeTable", "OutcomeTableError", "RewardConfig", "evaluate_actions",
           "load_policy", "reward_terms", "save_policy"]
