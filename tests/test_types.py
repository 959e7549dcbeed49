import pytest

from mcr_swift import ENTITY_TYPES, Entity, Sample


def test_entity_positional_and_box_forms():
    e = Entity("Kevin Durant", "PER", ((10, 20, 50, 80),))
    assert e.text == "Kevin Durant" and e.type == "PER"
    assert e.boxes == ((10.0, 20.0, 50.0, 80.0),)
    assert e.located and e.box == (10.0, 20.0, 50.0, 80.0)
    # a single flat box and None are accepted
    assert Entity("A", "ORG", (1, 2, 3, 4)).boxes == ((1.0, 2.0, 3.0, 4.0),)
    assert Entity("A", "ORG", None).boxes == () and not Entity("A", "ORG").located
    # several gold boxes
    assert len(Entity("A", "ORG", [[0, 0, 1, 1], [2, 2, 3, 3]]).boxes) == 2
    with pytest.raises(ValueError):
        Entity("A", "ORG", [(1, 2, 3)])
    with pytest.raises(ValueError):
        Entity("A", "ORG", [(1, 2, float("nan"), 4)])


def test_entity_dict_round_trip_and_hashable():
    e = Entity("NBA", "ORG", [(1, 2, 3, 4), (5, 6, 7, 8)])
    assert Entity.from_dict(e.to_dict()) == e
    assert Entity.from_dict({"entity": "NBA", "type": "ORG", "bbox": None}) == Entity("NBA", "ORG")
    assert len({e, Entity.from_dict(e.to_dict())}) == 1


def test_sample_sentence_and_sizes():
    s = Sample("1", ["RT", "Kevin", "Durant"], [Entity("Kevin Durant", "PER")], ["1.jpg"], [(640, 480)])
    assert s.sentence == "RT Kevin Durant"
    assert s.image == "1.jpg" and s.image_size == (640, 480)
    assert ENTITY_TYPES == ("PER", "LOC", "ORG", "OTHER")
