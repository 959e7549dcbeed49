"""ms-swift glue (Sec. 4.2, App. D): dataset/reward registration, the reward ORMs (Eq. 6-10, 13-18), the plugin file given to swift (`_file/`) and the tiny test model. See docs/rewards.md and docs/data.md (registered datasets).
"""
