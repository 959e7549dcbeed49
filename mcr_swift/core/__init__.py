"""The pure core: the data model (`entities`, `columns`), coordinates (`coords`), the answer format
(`answer`), the answer parser (`parser`, with `parsing/`), the rewards (`rewards`, Eq. 6-18), one
completion's score against a row (`scoring`) and the metrics (`metrics`, Eq. 19-31). It imports
nothing from the stages (data, synth, evaluation, reports, plugin, pipeline) and nothing from ms-swift
(tests/test_layout.py)."""
