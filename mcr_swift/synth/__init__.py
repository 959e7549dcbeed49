"""MRSI and CVO data (Sec. 4.1, 4.2.2; App. C, D.3): the multi-style CoT set D_R (styles, synthesize), the D1/D2 split and the CVO data filter (App. D.3). The OpenAI-compatible endpoint client is `mcr_swift.endpoint`. See docs/pipeline.md.
"""
