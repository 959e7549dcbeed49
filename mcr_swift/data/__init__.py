"""Data stage: readers of Twitter-GMNER, MNER-MI and gRefCOCO (Sec. 5.1, App. E.1), the ms-swift row format, `prepare` and the stand-in images; `samples/` holds invented sample files in the released formats. See docs/data.md.
"""
