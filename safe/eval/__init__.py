"""Evaluation: answer scoring and metrics (`metrics`), success criteria (`criteria`), plots (`plots`),
markdown reports and the model card (`report`), and the prediction table of a deployed model (`evaluation`).

Nothing is imported here on purpose: training code imports `safe.eval.metrics.score` in hot loops and must not
pay for matplotlib or pandas plotting machinery.
"""
