"""Evaluation (Sec. 5, App. E.2-E.3): `evaluate` over swift infer output (reading rows and gold:
`reading`), the Table 1 baselines and `predict` on new posts. The parser and the metrics (Eq. 19-31) are
in `mcr_swift.core`. See docs/metrics.md and docs/rewards.md (parser).
"""
