"""MRSI data synthesis (Sec. 3.1, App. C): the multi-style CoT set D_R (styles, synthesize), the D1/D2 split, the CVO data filter (App. D.3) and the OpenAI-compatible endpoint client."""
