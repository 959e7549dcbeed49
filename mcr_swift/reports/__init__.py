"""Reports: pictures of gold/predicted boxes, the modality-bias report (Eq. 30-31, Sec. 4.4), training curves and the full-pipeline run report."""
