"""The answer parser's parts: `vocab` (limits, type words, key names, normalisers), `grammar` (the
well-formed answer styles), `boxes` and `salvage` (recovery: box repairs, malformed and truncated
JSON). The public entry points are in `mcr_swift.core.parser`."""
