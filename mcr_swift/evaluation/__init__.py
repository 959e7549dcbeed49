"""Evaluation (Sec. 5, App. E.2-E.3): the answer parser, the metrics (Eq. 19-31), `evaluate` over swift infer output, the Table 1 baselines and `predict` on new posts. See docs/metrics.md and docs/rewards.md (parser).
"""
