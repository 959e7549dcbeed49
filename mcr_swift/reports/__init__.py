"""Reports: pictures of gold/predicted boxes, the modality-bias report (Eq. 26-31, Sec. 5.5), training curves and the full-pipeline run report. See docs/metrics.md.
"""
