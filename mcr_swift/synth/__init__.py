"""MRSI and CVO data (Sec. 4.1, 4.2.2; App. C, D.3): the multi-style CoT set D_R (styles, synthesize), the D1/D2 split, the CVO data filter (App. D.3) and the OpenAI-compatible endpoint client. See docs/pipeline.md.
"""
