"""The answer parser's parts, and their public face (what `mcr_swift.core.parser` and other
modules use): `vocab` (limits, tags, type words, key names, the per-parse `ParseState`, the salvage
markers, normalisers), `grammar` (the well-formed answer styles), `boxes` and `salvage` (recovery: box
repairs, cut and malformed structures). The entry points are in `mcr_swift.core.parser`."""

from .grammar import Keyed, answer_items, convert_items, is_number, parse_lines, parse_qwen_tokens, parse_tuples
from .salvage import MAX_DEPTH, MAX_TOKENS, clean_json, lenient_value, read_json, scan_json
from .vocab import (ANSWER_CLOSE, ANSWER_OPEN, BOX_CLOSE, BOX_OPEN, CUT, MAX_GROUP, MAX_JSON_FAILS, MAX_LINES,
                    MAX_SCAN, MISSING, NUM, REF_CLOSE, REF_OPEN, THINK_CLOSE, THINK_OPEN, TYPE_SYNONYMS,
                    DamagedDict, DamagedList, ParseState, clean_entity_text, is_damaged, normalize_type)

__all__ = ["Keyed", "answer_items", "convert_items", "is_number", "parse_lines", "parse_qwen_tokens", "parse_tuples",
           "MAX_DEPTH", "MAX_TOKENS", "clean_json", "lenient_value", "read_json", "scan_json",
           "ANSWER_CLOSE", "ANSWER_OPEN", "BOX_CLOSE", "BOX_OPEN", "CUT", "MAX_GROUP", "MAX_JSON_FAILS",
           "MAX_LINES", "MAX_SCAN", "MISSING", "NUM", "REF_CLOSE", "REF_OPEN", "THINK_CLOSE", "THINK_OPEN",
           "TYPE_SYNONYMS", "DamagedDict", "DamagedList", "ParseState", "clean_entity_text", "is_damaged",
           "normalize_type"]
