"""Evaluation (Sec. 4, App. E): the answer parser, the metrics (Eq. 19-31), `evaluate` over swift infer output, the Table 1 baselines and `predict` on new posts."""
