"""The answer parser: every accepted format, normalisation, repairs, adversarial inputs, round trip."""
from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcr_swift.core.answer import render_answer
from mcr_swift.core.parser import (MAX_SCAN, TYPE_SYNONYMS, ParseResult, clean_entity_text, format_ok,
                                   normalize_type, parse_answer)
from mcr_swift.core.entities import ENTITY_TYPES, Entity

KD = Entity("Kevin Durant", "PER", (10, 11, 37, 38))
NBA = Entity("NBA", "ORG")


def triples(res: ParseResult):
    return [(e.text, e.type, e.boxes) for e in res.entities]


def wrap(body: str) -> str:
    return f"<think>\nreasoning\n</think>\n<answer>\n{body}\n</answer>"


def check(text, expected, fmt, *, dropped=0, repaired=0, extent=None):
    res = parse_answer(text, extent=extent)
    assert res.ok, res
    assert res.entities == expected, triples(res)
    assert (res.format, res.dropped, res.repaired) == (fmt, dropped, repaired)
    return res


# --------------------------------------------------------------------------- canonical
def test_canonical_answer():
    text = wrap('[{"entity": "Kevin Durant", "type": "PER", "bbox": [10, 11, 37, 38]}, '
                '{"entity": "NBA", "type": "ORG", "bbox": null}]')
    check(text, [KD, NBA], "json")
    assert format_ok(text)


def test_last_answer_block_wins_and_truncated_close_tag():
    text = ('<think>I will write <answer>[{"entity": "X", "type": "PER", "bbox": null}]</answer></think>'
            '<answer>[{"entity": "NBA", "type": "ORG", "bbox": null}]</answer>')
    check(text, [NBA], "json")
    check('<answer>[{"entity": "NBA", "type": "ORG", "bbox": null}]', [NBA], "json")  # no </answer>


def test_no_answer_tag_takes_last_json_after_think():
    text = ('<think>boxes like [1, 2, 3, 4] and [{"entity": "X", "type": "LOC", "bbox": null}]</think>'
            'So the answer is [{"entity": "NBA", "type": "ORG", "bbox": null}] and that is all.')
    check(text, [NBA], "json")
    text = ('Candidates: [{"entity": "X", "type": "LOC", "bbox": null}]. Final: '
            '[{"entity": "NBA", "type": "ORG", "bbox": null}]')
    check(text, [NBA], "json")
    check('```json\n[{"entity": "NBA", "type": "ORG", "bbox": null}]\n```', [NBA], "json")


# --------------------------------------------------------------------------- JSON variants
@pytest.mark.parametrize("item", [
    '{"name": "Kevin Durant", "category": "person", "box": [10, 11, 37, 38]}',
    '{"span": "Kevin Durant", "entity_type": "per", "bbox_2d": [[10, 11], [37, 38]]}',
    '{"text": "Kevin Durant", "label": "PER", "location": "[10, 11, 37, 38]"}',
    '{"label": "Kevin Durant", "type": "Person", "loc": "(10,11),(37,38)"}',
    '{"entity_name": "Kevin Durant", "type": "PER", "region": {"x1": 10, "y1": 11, "x2": 37, "y2": 38}}',
    '{"bbox": [10, 11, 37, 38], "type": "PER", "entity": "Kevin Durant"}',
    '{"entity": "Kevin Durant", "type": "PER", "coordinates": ["10", "11", "37", "38"]}',
    '{"entity": "Kevin Durant", "type": "PER", "bbox": [[10, 11, 37, 38]]}',
    '{"entity": "Kevin Durant", "type": "PER", "bbox": <|box_start|>(10,11),(37,38)<|box_end|>}',
])
def test_json_key_names_and_box_forms(item):
    check(wrap(f"[{item}]"), [KD], "json")


@pytest.mark.parametrize("null", ['null', '"None"', '"null"', '""', '[]', '"N/A"', '"none"', '{}',
                                  '"not visible"'])
def test_json_unlocated_values(null):
    check(wrap(f'[{{"entity": "NBA", "type": "ORG", "bbox": {null}}}]'), [NBA], "json")


def test_json_legacy_qwen_box_tokens_as_ms_swift_writes_them():
    # QWENVL_BBOX_FORMAT=legacy: ms-swift replaces the <bbox> placeholder by Qwen's box tokens
    text, boxes = render_answer([KD, NBA], "r", placeholders=True)
    text = text.replace("<bbox>", "<|box_start|>(10,11),(37,38)<|box_end|>")
    check(text, [KD, NBA], "json")
    assert format_ok(text)


def test_json_dict_forms():
    check(wrap('{"Kevin Durant": {"type": "PER", "bbox": [10, 11, 37, 38]}, "NBA": {"type": "ORG"}}'),
          [KD, NBA], "json")
    check(wrap('{"Kevin Durant": ["PER", [10, 11, 37, 38]], "NBA": "ORG"}'), [KD, NBA], "json")
    check(wrap('{"entities": [{"entity": "NBA", "type": "ORG", "bbox": null}]}'), [NBA], "json")
    check(wrap('{"PER": ["Kevin Durant"], "ORG": ["NBA"]}'),
          [Entity("Kevin Durant", "PER"), NBA], "json")
    check(wrap('{"entity": "NBA", "type": "ORG", "bbox": null}'), [NBA], "json")  # a single object


def test_json_lists_of_lists_and_strings():
    check(wrap('[["Kevin Durant", "PER", [10, 11, 37, 38]], ["NBA", "ORG", null]]'), [KD, NBA], "json")
    check(wrap('[["PER", "Kevin Durant", [10, 11, 37, 38]], [null, "ORG", "NBA"]]'), [KD, NBA], "json")
    check(wrap('["(Kevin Durant, PER, [10, 11, 37, 38])", "(NBA, ORG, None)"]'), [KD, NBA], "json")


def test_python_literal():
    check(wrap("[('Kevin Durant', 'PER', [10, 11, 37, 38]), ('NBA', 'ORG', None)]"), [KD, NBA], "python")
    check(wrap("[{'entity': 'NBA', 'type': 'ORG', 'bbox': None}]"), [NBA], "python")


# --------------------------------------------------------------------------- text formats
@pytest.mark.parametrize("body,fmt", [
    ("(Kevin Durant, PER, [10, 11, 37, 38])\n(NBA, ORG, None)", "tuple"),
    # a valid Python literal (a tuple of tuples) is read by the Python-literal branch
    ('("Kevin Durant", "PER", [10, 11, 37, 38]), ("NBA", "ORG", None)', "python"),
    ('("Kevin Durant", "PER", [10, 11, 37, 38])\n("NBA", "ORG", None)', "tuple"),
    ("(PER, Kevin Durant, [10, 11, 37, 38]); (ORG, NBA, None)", "tuple"),
    ("([10, 11, 37, 38], PER, Kevin Durant) (None, ORG, NBA)", "tuple"),
    ("(Kevin Durant, PER, (10,11),(37,38)) and (NBA, organization, null)", "tuple"),
    ("1. (Kevin Durant, person, 10, 11, 37, 38)\n2. ('NBA', 'org', 'None')", "tuple"),
])
def test_tuples_in_any_order(body, fmt):
    check(wrap(body), [KD, NBA], fmt)


def test_key_value_text_keeps_commas_in_values():
    check(wrap("Entity: Washington, D.C., Type: LOC, Box: None"), [Entity("Washington, D.C.", "LOC")], "lines")
    assert parse_answer(wrap("Type: PER")).ok is False  # a record without an entity


def test_tuple_needs_a_type_or_box_field():
    # parenthesised prose is not an entity
    assert parse_answer(wrap("(as seen in the image, nothing else)")).ok is False


def test_qwen_grounding_tokens():
    body = ("<|object_ref_start|>Kevin Durant<|object_ref_end|><|box_start|>(10,11),(37,38)<|box_end|> PER\n"
            "<|object_ref_start|>NBA<|object_ref_end|> (ORG, not in the image)")
    check(wrap(body), [KD, NBA], "qwen_tokens")
    # no type: kept with an empty type
    check(wrap("<|object_ref_start|>Kevin Durant<|object_ref_end|><|box_start|>(10,11),(37,38)<|box_end|>"),
          [Entity("Kevin Durant", "", (10, 11, 37, 38))], "qwen_tokens")


@pytest.mark.parametrize("body", [
    "Kevin Durant | PER | [10, 11, 37, 38]\nNBA | ORG | None",
    "Kevin Durant - PER - [10, 11, 37, 38]\nNBA - ORG - None",
    "- Kevin Durant: PER, [10, 11, 37, 38]\n- NBA: ORG, None",
    "| entity | type | bbox |\n|---|---|---|\n| Kevin Durant | PER | [10, 11, 37, 38] |\n| NBA | ORG | null |",
    "Kevin Durant\tPER\t[10, 11, 37, 38]\nNBA\tORG\tNone",
    "Kevin Durant (PER): [10, 11, 37, 38]\nNBA (ORG): None",
    "Entity: Kevin Durant, Type: PER, Location: [10, 11, 37, 38]\nEntity: NBA; Type: ORG; Box: None",
    "- entity: Kevin Durant\n  type: person\n  bbox: [10, 11, 37, 38]\n- entity: NBA\n  type: ORG\n  bbox: null",
    "[{entity: Kevin Durant, type: PER, bbox: [10, 11, 37, 38]}, {entity: NBA, type: ORG, bbox: null}]",
    '[{"entity": "Kevin Durant", "type": PER, "bbox": [10, 11, 37, 38]},\n{"entity": "NBA", "type": ORG}]',
])
def test_line_formats(body):
    check(wrap(body), [KD, NBA], "lines")


# --------------------------------------------------------------------------- empty / none
@pytest.mark.parametrize("body,fmt", [("[]", "json"), ("None", "empty"), ("null", "empty"),
                                      ("No entities.", "empty"), ("N/A", "empty"), ("{}", "json")])
def test_explicit_empty_answers_are_ok(body, fmt):
    res = parse_answer(wrap(body))
    assert (res.ok, res.entities, res.format) == (True, [], fmt)


@pytest.mark.parametrize("text", [None, "", "   ", "<answer></answer>", "hello world", "<think>hmm",
                                  "[1, 2, 3, 4]", 12, 3.5, object(), ["not", "messages"]])
def test_nothing_structured_is_not_ok(text):
    res = parse_answer(text)
    assert (res.ok, res.entities, res.format, res.dropped) == (False, [], "none", 0)


def test_other_input_types():
    assert parse_answer(wrap('[{"entity": "NBA", "type": "ORG", "bbox": null}]').encode()).entities == [NBA]
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": wrap('[{"entity": "NBA", "type": "ORG", "bbox": null}]')}]
    assert parse_answer(msgs).entities == [NBA]


# --------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("raw,expected", [
    ("PER", "PER"), ("per", "PER"), ("Person", "PER"), ("people", "PER"), ("HUMAN", "PER"),
    ("loc", "LOC"), ("Location", "LOC"), ("place", "LOC"), ("GPE", "LOC"),
    ("org", "ORG"), ("Organization", "ORG"), ("organisation", "ORG"), ("company", "ORG"), ("Team", "ORG"),
    ("other", "OTHER"), ("MISC", "OTHER"), ("miscellaneous", "OTHER"), ("Others", "OTHER"),
    (" 'PER' ", "PER"), ("athlete", "ATHLETE"), ("B-PER", "B-PER"), ("  event  name ", "EVENT NAME"),
    (None, ""), ("", ""),
])
def test_type_normalisation(raw, expected):
    assert normalize_type(raw) == expected


def test_entity_text_normalisation():
    assert clean_entity_text('  "Kevin   Durant"  ') == "Kevin Durant"
    assert clean_entity_text("'NBA'") == "NBA"
    assert clean_entity_text("\u201cNew\tYork\u201d") == "New York"
    assert clean_entity_text("<|object_ref_start|>NBA<|object_ref_end|>") == "NBA"
    assert clean_entity_text("O'Neal") == "O'Neal"
    assert clean_entity_text("   ") is None and clean_entity_text(None) is None
    assert clean_entity_text(2016) == "2016"


# --------------------------------------------------------------------------- repairs
def test_box_repairs_and_counts():
    body = ('[{"entity": "A", "type": "PER", "bbox": [NaN, 2, 3, 4]},'      # non-finite: unlocated (rep)
            ' {"entity": "B", "type": "PER", "bbox": [1, 2, Infinity, 4]},'  # non-finite: unlocated (rep)
            ' {"entity": "C", "type": "PER", "bbox": [30, 40, 10, 20]},'     # swapped corners (rep)
            ' {"entity": "D", "type": "PER", "bbox": [-5, -1, 10, 20]},'     # clamped to 0 (rep)
            ' {"entity": "E", "type": "PER", "bbox": [5, 5, 5, 9]},'         # zero area: unlocated (rep)
            ' {"entity": "F", "type": "PER", "bbox": [1, 2, 3]},'            # 3 numbers: unlocated (rep)
            ' {"entity": "G", "type": "PER", "bbox": [-9, -9, -1, -1]},'     # all negative -> zero area (rep)
            ' {"entity": "H", "type": "PER", "bbox": [[1, 2, 3, 4], [5, 6, 7, 8]]},'  # several: first (rep)
            ' {"entity": "", "type": "PER", "bbox": null},'                  # no text: dropped
            ' {"type": "ORG", "bbox": null},'                                # no text: dropped
            ' 42]')                                                          # not an entity: dropped
    res = parse_answer(wrap(body))
    assert res.ok and res.format == "json"
    assert triples(res) == [("A", "PER", ()), ("B", "PER", ()), ("C", "PER", ((10.0, 20.0, 30.0, 40.0),)),
                            ("D", "PER", ((0.0, 0.0, 10.0, 20.0),)), ("E", "PER", ()), ("F", "PER", ()),
                            ("G", "PER", ()), ("H", "PER", ((1.0, 2.0, 3.0, 4.0),))]
    assert res.repaired == 8 and res.dropped == 3


def test_extent_clamps_upper_bound():
    res = parse_answer(wrap('[{"entity": "A", "type": "PER", "bbox": [10, 10, 500, 90]},'
                            ' {"entity": "B", "type": "PER", "bbox": [300, 10, 400, 20]}]'), extent=(200, 100))
    assert triples(res) == [("A", "PER", ((10.0, 10.0, 200.0, 90.0),)), ("B", "PER", ())]
    assert res.repaired == 2
    # a bad extent is ignored
    assert parse_answer(wrap('[{"entity": "A", "type": "PER", "bbox": [1, 1, 500, 90]}]'),
                        extent=(float("nan"), 1)).entities[0].box == (1, 1, 500, 90)


def test_truncated_json_keeps_complete_objects():
    text = ('<think>x</think><answer>[{"entity": "Kevin Durant", "type": "PER", "bbox": [10, 11, 37, 38]}, '
            '{"entity": "NBA", "type": "ORG", "bbox": null}, {"entity": "Lak')
    check(text, [KD, NBA], "json", dropped=1, repaired=1)
    check(wrap('[{"entity": "NBA", "type": "ORG", "bbox": null},]'), [NBA], "json", repaired=1)


def test_a_cut_answer_recovers_alike_in_every_structure():
    # issue 20: the list-of-lists form used to read as [B] with nothing counted
    A, B = Entity("A", "PER"), Entity("B", "ORG", ((1, 2, 3, 4),))
    for body, fmt in (('[["A","PER",null],["B","ORG",[1,2,3,4]],["C"', "json"),
                      ('[{"entity":"A","type":"PER","bbox":null},{"entity":"B","type":"ORG","bbox":[1,2,3,4]},'
                       '{"entity":"C"', "json"),
                      ('[("A","PER",None),("B","ORG",[1,2,3,4]),("C"', "json"),
                      ('{"entities": [["A","PER",null],["B","ORG",[1,2,3,4]],["C","LOC",[5,', "json"),
                      ('(A, PER, None), (B, ORG, [1,2,3,4]), (C', "tuple"),
                      ("A | PER | None\nB | ORG | [1,2,3,4]\nC |", "lines"),
                      ("<|object_ref_start|>A<|object_ref_end|> PER\n<|object_ref_start|>B<|object_ref_end|>"
                       "<|box_start|>(1,2),(3,4)<|box_end|> ORG\n<|object_ref_start|>C", "qwen_tokens")):
        check("<answer>" + body, [A, B], fmt, dropped=1, repaired=1)
    # grouped by type: the cut name is lost, the whole ones keep their type
    check('<answer>{"PER": ["A", "B"], "ORG": ["C", "D', [Entity("A", "PER"), Entity("B", "PER"),
                                                      Entity("C", "ORG")], "json", dropped=1, repaired=1)
    # an item that is only a type word is dropped and counted once (it used to count twice)
    check('<answer>[["PER"], ["NBA", "ORG", null]]</answer>', [NBA], "json", dropped=1)
    # a malformed item (an unquoted type) is dropped and counted, the others kept
    check('<answer>[["A",PER,null],["B","ORG",[1,2,3,4]]]</answer>', [B], "json", dropped=1, repaired=1)


def test_a_list_of_lists_past_the_window_is_cut_there():
    body = json.dumps([[f"Spam{i}", "PER", None] for i in range(30_000)])
    res = parse_answer(f"<answer>{body}</answer>")  # used to read as one entity (Spam2775)
    assert res.entities == [Entity(f"Spam{i}", "PER") for i in range(200)] and res.repaired == 1
    assert res.dropped > 2000


def test_duplicates_are_kept_and_max_entities():
    body = json.dumps([{"entity": "NBA", "type": "ORG", "bbox": None}] * 5)
    assert len(parse_answer(wrap(body)).entities) == 5
    res = parse_answer(wrap(body), max_entities=3)
    assert len(res.entities) == 3 and res.dropped == 2


# --------------------------------------------------------------------------- adversarial
def test_ten_thousand_entities():
    ents = [Entity(f"E{i}", "PER", (i, i, i + 5, i + 5)) for i in range(10_000)]
    text, _ = render_answer(ents, "r")
    t = time.perf_counter()
    res = parse_answer(text)
    elapsed = time.perf_counter() - t
    assert res.ok and res.entities == ents[:200]
    # only the first MAX_SCAN characters after <answer> are read: the list is cut there
    in_window = text[text.rfind("<answer>") + 8:][:MAX_SCAN].count('{"entity"')
    # the object cut at the window's edge is counted as dropped too
    assert res.dropped in (in_window - 200, in_window - 199) and res.repaired == 1
    assert elapsed < 0.5
    small = json.dumps([{"entity": f"E{i}", "type": "PER", "bbox": None} for i in range(1000)])
    res = parse_answer(wrap(small))
    assert len(res.entities) == 200 and res.dropped == 800 and res.repaired == 0


@pytest.mark.parametrize("junk", [
    "x" * 5_000_000,
    "(" * 1_000_000,
    "[" * 1_000_000,
    "{" * 1_000_000,
    '{"a": [' * 200_000,
    "(a, PER, " * 300_000,
    "<answer>" + "[" * 100_000,
    "<answer>" + '{"entity": "' * 100_000,
    "<|object_ref_start|>" * 200_000,
    "<|box_start|>(1,2),(3," * 200_000,
    "| PER | " * 500_000,
    "\n".join(["Kevin Durant | PER | [1,2,3,4]"] * 200_000),
    "[(" * 300_000 + ")]" * 300_000,
    "<think>" + "[1, 2, 3, 4] " * 400_000 + "</think><answer>[]</answer>",
])
def test_adversarial_inputs_are_fast_and_never_raise(junk):
    t = time.perf_counter()
    res = parse_answer(junk)
    assert time.perf_counter() - t < 2.0
    assert isinstance(res, ParseResult) and res.dropped >= 0 and res.repaired >= 0
    assert len(res.entities) <= 200


def test_huge_numbers_and_odd_values():
    body = ('[{"entity": "A", "type": "PER", "bbox": [1e400, 2, 3, 4]},'
            ' {"entity": "B", "type": ["PER"], "bbox": [1, 2, 30, 40]},'
            ' {"entity": ["x"], "type": "PER", "bbox": null},'
            ' {"entity": "C", "type": {"a": 1}, "bbox": true},'
            ' {"entity": "D", "type": "PER", "bbox": [' + "9" * 400 + ', 2, 3, 4]}]')  # int too big for a float
    res = parse_answer(wrap(body))
    assert res.ok
    assert [(e.text, e.type) for e in res.entities] == [("A", "PER"), ("B", "PER"), ("C", "{'A': 1}"),
                                                        ("D", "PER")]
    assert res.entities[0].boxes == () and res.entities[1].boxes == ((1, 2, 30, 40),)
    assert res.entities[3].boxes == () and res.repaired == 3  # A (inf), C (true), D (overflow)
    for e in res.entities:
        assert all(math.isfinite(v) for b in e.boxes for v in b)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.text(alphabet='[]{}(),:"\' PERORGLOC0123456789.-<>/answerthinkboxnull|\n', max_size=300)))
def test_never_raises_on_arbitrary_text(text):
    for t in (text, "<answer>" + text if isinstance(text, str) else text):
        res = parse_answer(t)
        assert isinstance(res, ParseResult)
        assert res.ok or (res.entities == [] and res.format == "none")
        for e in res.entities:
            assert isinstance(e, Entity) and e.text and len(e.boxes) <= 1
            for b in e.boxes:
                assert all(math.isfinite(v) and v >= 0 for v in b) and b[2] > b[0] and b[3] > b[1]
        format_ok(t)


# --------------------------------------------------------------------------- round trip
_TAGS = ("<|", "<think>", "</think>", "<answer>", "</answer>")  # texts holding tags are not answers
_token = st.one_of(st.sampled_from(["<3", "@user", "#NBA", "O'Neal", '"', "New"]), st.text(min_size=1, max_size=8)).filter(
    lambda s: s.split() == [s] and not any(t in s for t in _TAGS))


@st.composite
def _entity(draw):
    text = " ".join(draw(st.lists(_token, min_size=1, max_size=3)))
    if clean_entity_text(text) != text or any(t in text for t in _TAGS):  # e.g. '"a"' or "<ans wer>"
        text = "x" + text.replace("<", "") + "x"
    box = None
    if draw(st.booleans()):
        x1 = draw(st.one_of(st.integers(0, 5000), st.floats(0, 5000)))
        y1 = draw(st.one_of(st.integers(0, 5000), st.floats(0, 5000)))
        box = (x1, y1, x1 + draw(st.integers(1, 900)), y1 + draw(st.floats(0.5, 900)))
    return Entity(text, draw(st.sampled_from(ENTITY_TYPES)), box)


@settings(max_examples=200, deadline=None)
@given(st.lists(_entity(), max_size=12), st.text(max_size=50).filter(lambda s: "<" not in s))
def test_render_answer_round_trip(entities, reasoning):
    text, boxes = render_answer(entities, reasoning, placeholders=False)
    assert boxes == []
    res = parse_answer(text)
    assert res.ok and res.format == "json" and res.dropped == 0 and res.repaired == 0
    assert res.entities == entities
    assert format_ok(text)


# --------------------------------------------------------------------------- format_ok
@pytest.mark.parametrize("text,ok", [
    (wrap('[{"entity": "NBA", "type": "ORG", "bbox": null}]'), True),
    (wrap("[]"), True),
    ("<think></think><answer>[]</answer>", True),
    (wrap('[{"entity": "NBA", "type": "ORG", "bbox": [1, 2, 3, 4]}]'), True),
    (wrap('[{"entity": "NBA", "type": "ORG"}]'), False),                              # missing key
    (wrap('[{"entity": "NBA", "type": "ORG", "bbox": null, "x": 1}]'), False),       # extra key
    (wrap('[{"entity": "NBA", "type": "ORG", "bbox": [1, 2, 3]}]'), False),
    (wrap('[{"entity": "NBA", "type": "ORG", "bbox": [1, 2, 3, NaN]}]'), False),
    (wrap('[{"entity": "", "type": "ORG", "bbox": null}]'), False),
    (wrap('{"entity": "NBA", "type": "ORG", "bbox": null}'), False),                  # not a list
    (wrap("(NBA, ORG, None)"), False),
    ('<answer>[]</answer>', False),                                                   # no think
    ('<think>a</think><think>b</think><answer>[]</answer>', False),
    ('<think>a</think><answer>[]</answer><answer>[]</answer>', False),
    ('<answer>[]</answer><think>a</think>', False),                                   # wrong order
    ('<think>a</think>\n<answer>[]</answer> trailing text', False),
    (None, False), (b"\xff", False),
])
def test_format_ok(text, ok):
    assert format_ok(text) is ok


# --------------------------------------------------------------------------- speed
def test_parse_is_fast_on_canonical_answers():
    ents = [Entity(f"Entity number {i}", ENTITY_TYPES[i % 4], (i, i, i + 50, i + 60) if i % 2 else None)
            for i in range(8)]
    text, _ = render_answer(ents, "some reasoning " * 50)
    parse_answer(text)
    t = time.perf_counter()
    for _ in range(512):
        parse_answer(text)
    assert time.perf_counter() - t < 0.5  # typically ~20 ms


# --------------------------------------------------------------------------- what counts as parseable
@pytest.mark.parametrize("text", [
    "<answer>[]</answer>", "<think>x</think>\n<answer>\n[]\n</answer>", "<answer>{}</answer>",
    '<answer>{"entities": []}</answer>', "<answer>None</answer>", "<answer>null</answer>",
    "<answer>N/A</answer>", "<answer>no entities</answer>", "There are no entities.", "[]",
    "<think>nothing to see</think>\nnothing"])
def test_explicit_empty_answers_are_answered(text):
    r = parse_answer(text)
    assert r.ok and r.answered and r.entities == []


@pytest.mark.parametrize("text", [
    None, "", "I refuse.", "x" * 5000, "<answer></answer>", "<answer>[1, 2, 3]</answer>", "<answer>[",
    '<answer>""</answer>', "<answer>[{}]</answer>", "<answer>[null]</answer>", "<answer>[[]]</answer>",
    '<answer>[{"foo": 1}]</answer>', "<answer>()</answer>", b"\xff\xfe"])
def test_junk_is_not_answered(text):
    r = parse_answer(text)
    assert not r.answered and r.entities == []


def test_partial_answers_keep_what_they_read():
    # a truncated list: the complete object is kept (repaired 1, dropped 1) and the answer counts
    r = parse_answer('<answer>[{"entity": "NBA", "type": "ORG", "bbox": null}, {"entity": "Ke')
    assert r.answered and [e.text for e in r.entities] == ["NBA"] and (r.dropped, r.repaired) == (1, 1)
    # a box that cannot be repaired leaves the entity unlocated (repaired 1): still an answer
    r = parse_answer('<answer>[{"entity": "NBA", "type": "ORG", "bbox": [1, 2, 3]}]</answer>')
    assert r.answered and r.entities == [Entity("NBA", "ORG")] and r.repaired == 1


def test_a_cut_single_object_is_lost_and_not_answered():
    # the object the cut runs through is lost, in every form (it may have lost its box): nothing
    # read, one dropped, one repair (the closed list), so no reward is paid for it
    r = parse_answer('<answer>[{"entity": "NBA", "type": "ORG"')
    assert not r.answered and (r.entities, r.dropped, r.repaired) == ([], 1, 1)
    assert not parse_answer("<answer>[").answered


# --------------------------------------------------------------------------- every answer form alike
# The same entity list in each form the parser reads: a record ends at the end returned with it
# (its closing bracket, or the line break of the line forms); what follows it up to the next record is
# a separator.
_NOT_TEXT = frozenset(["none", "null", "nil", "na", "no", "false", "true", "nan", "inf", "infinity",
                       "undefined", "nothing", "unlocated"]) | frozenset(TYPE_SYNONYMS)
_word = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=8).filter(
    lambda w: w.lower() not in _NOT_TEXT)


@st.composite
def _form_entity(draw):
    text = " ".join(draw(st.lists(_word, min_size=1, max_size=3)))
    box = None
    if draw(st.booleans()):
        x1, y1 = draw(st.integers(0, 900)), draw(st.integers(0, 900))
        box = (x1, y1, x1 + draw(st.integers(1, 99)), y1 + draw(st.integers(1, 99)))
    return Entity(text, draw(st.sampled_from(ENTITY_TYPES)), (box,) if box else ())


def _box_text(e):
    return "[%d, %d, %d, %d]" % e.box if e.boxes else "None"


def _records(form, ents):
    """(opening, [(record, separator after it)], closing) of ``ents`` written in ``form``."""
    if form == "json_objects":
        recs = [json.dumps({"entity": e.text, "type": e.type, "bbox": list(e.box) if e.boxes else None})
                for e in ents]
        return "[", [(r, ", ") for r in recs], "]"
    if form == "json_lists":
        return "[", [(json.dumps([e.text, e.type, list(e.box) if e.boxes else None]), ", ") for e in ents], "]"
    if form == "python_tuples":
        return "[", [(repr((e.text, e.type, list(e.box) if e.boxes else None)), ", ") for e in ents], "]"
    if form == "tuples":
        return "", [(f"({e.text}, {e.type}, {_box_text(e)})", ", ") for e in ents], ""
    if form == "lines":
        return "", [(f"{e.text} | {e.type} | {_box_text(e)}\n", "") for e in ents], ""
    if form == "qwen_tokens":
        return "", [("<|object_ref_start|>%s<|object_ref_end|>%s %s\n" % (
            e.text, "<|box_start|>(%d,%d),(%d,%d)<|box_end|>" % e.box if e.boxes else "", e.type), "")
            for e in ents], ""
    raise ValueError(form)


_FORMS = ("json_objects", "json_lists", "python_tuples", "tuples", "lines", "qwen_tokens")
_FORMAT_OF = {"json_objects": "json", "json_lists": "json", "python_tuples": "python", "tuples": "tuple",
              "lines": "lines", "qwen_tokens": "qwen_tokens"}


def _render(form, ents):
    """The answer body and, per record, the offset where it ends."""
    opening, recs, closing = _records(form, ents)
    body, ends = opening, []
    for i, (r, sep) in enumerate(recs):
        body += r
        ends.append(len(body))
        if i < len(recs) - 1:
            body += sep
    return body + closing, ends


@pytest.mark.parametrize("form", _FORMS)
@settings(max_examples=60, deadline=None)
@given(ents=st.lists(_form_entity(), min_size=1, max_size=8))
def test_every_form_reads_the_same_entities(form, ents):
    body, _ = _render(form, ents)
    res = parse_answer(f"<think>r</think><answer>{body}</answer>")
    assert res.entities == ents, (body, triples(res))
    assert (res.format, res.dropped, res.repaired) == (_FORMAT_OF[form], 0, 0)


@pytest.mark.parametrize("form", _FORMS)
@settings(max_examples=60, deadline=None)
@given(ents=st.lists(_form_entity(), min_size=1, max_size=6), data=st.data())
def test_a_cut_answer_keeps_its_whole_records_in_every_form(form, ents, data):
    """Cut anywhere (the end of the text, no ``</answer>``): never raises, reads exactly the records
    that ended before the cut, and counts one dropped item iff a record was begun after them."""
    body, ends = _render(form, ents)
    cut = data.draw(st.integers(0, len(body)), label="cut")
    prefix = body[:cut]
    res = parse_answer("<answer>" + prefix)
    whole = sum(1 for e in ends if e <= cut)
    assert res.entities == ents[:whole], (prefix, triples(res))
    opening, _, closing = _records(form, ents)
    rest = prefix[ends[whole - 1]:] if whole else prefix[len(opening):]
    begun = rest.lstrip(", \n") not in ("", closing)
    # (with no whole record, a text form reads as prose, nothing counted, unless a bracket or a
    # reference token opened the record)
    counted = begun and (whole > 0 or opening == "[" or "<|object_ref_start|>" in prefix)
    assert res.dropped == (1 if counted else 0), (prefix, res)
    assert res.answered == bool(whole)
    # a cut inside the tag itself, or of the whole text from its start, never raises either
    assert isinstance(parse_answer(("<answer>" + prefix)[:cut]), ParseResult)


@pytest.mark.parametrize("form", _FORMS)
def test_spam_in_every_form_is_read_up_to_max_entities_and_counted(form):
    """30,000 entities in any form: 200 read, the rest of the 64 KiB window counted as dropped (the
    list-of-lists form used to read as 1 entity past the window, and scored 0.9)."""
    ents = [Entity(f"Spam{i}", "PER", ((1, 2, 30, 40),) if i % 2 else ()) for i in range(30_000)]
    body, _ = _render(form, ents)
    t = time.perf_counter()
    res = parse_answer(f"<answer>{body}</answer>")
    assert time.perf_counter() - t < 1.0
    assert res.entities == ents[:200], form
    assert res.dropped >= 100 and res.answered  # (the window, or MAX_TOKENS tokens, are counted)
    # the same spam with no tags (the last 64 KiB are read: the start of the text is cut off there)
    res = parse_answer(body)
    assert len(res.entities) == 200 and res.dropped > 0, (form, len(res.entities))
