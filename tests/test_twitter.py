"""The Twitter-GMNER reader on the real shared release (v2 and v1) and on malformed fixtures."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from mcr_swift import Entity, GMNERFormatError, load_twitter_gmner
from tests.conftest import DATA_V1

# Required counts on the shared v2 data: posts, entities, entities with at least one box.
EXPECTED_V2 = {"train": (7000, 11779, 4733), "dev": (1500, 2450, 991), "test": (1500, 2543, 1046)}


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_v2_counts(data_v2, split):
    samples = load_twitter_gmner(data_v2, split)
    posts, ents, located = EXPECTED_V2[split]
    assert len(samples) == posts
    assert sum(len(s.entities) for s in samples) == ents
    assert sum(1 for s in samples for e in s.entities if e.boxes) == located
    rep = samples.report
    assert (rep.posts, rep.entities, rep.located_entities) == (posts, ents, located)
    assert not rep.skipped and not rep.unmatched_names


def test_v2_first_post_and_multi_box(data_v2):
    samples = load_twitter_gmner(data_v2, "train")
    first = samples[0]
    assert first.id == "797970"
    assert first.tokens[:5] == ("RT", "@", "MahaveerM", "_", ":")
    assert first.entities == (Entity("Pak", "LOC"),)
    assert first.images == ("797970.jpg",) and first.image_size is None  # no xml, no image dir
    multi = [e for s in samples for e in s.entities if len(e.boxes) >= 2]
    assert len(multi) == 421  # entities with 2+ boxes in train (an entity takes every same-named box)
    # entity text = span tokens joined by single spaces, and it occurs in the sentence
    for s in samples[:500]:
        for e in s.entities:
            assert e.text in s.sentence and "  " not in e.text


def test_xml_boxes_and_size(data_v2):
    # 1000046.xml: one object "Bieber" (132, 22, 500, 706) in a 500x706 image.
    s = next(x for x in load_twitter_gmner(data_v2, "train") if x.id == "1000046")
    bieber = [e for e in s.entities if e.text == "Bieber"]
    assert bieber and bieber[0].boxes == ((132.0, 22.0, 500.0, 706.0),)
    assert s.image_size == (500, 706)


# Required entity counts on the shared v1 data, read the conlleval way (the default), and the
# number of I- tags that begin an entity there (I- after O: train.txt line 79054 is the first).
EXPECTED_V1 = {"train": (11782, 4), "dev": (2453, 3), "test": (2543, 1)}


@pytest.mark.shared(DATA_V1)
@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_v1_loads_by_default_conlleval(split):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # v1's unmatched xml names
        samples = load_twitter_gmner(DATA_V1, split)
    ents, repairs = EXPECTED_V1[split]
    assert len(samples) == (7000 if split == "train" else 1500)
    assert sum(len(s.entities) for s in samples) == ents == samples.report.entities
    assert samples.report.repaired["I- tags beginning an entity (conlleval)"] == repairs
    assert not samples.report.skipped
    assert f"repaired {repairs} I- tags beginning an entity (conlleval)" in samples.report.summary()
    if split == "train":
        assert samples.report.messages[0].endswith("train.txt:79054: tag I-OTHER after O read as B-OTHER")


@pytest.mark.shared(DATA_V1)
def test_v1_unmatched_names_reported_and_orphan_tags_strict(tmp_path):
    # v1 has xml <name>s matching no entity (never an error) and I- tags with no B- (an error in
    # strict mode unless skipped).
    with pytest.raises(GMNERFormatError, match=r"test\.txt:\d+: tag I-OTHER after O has no B-OTHER"):
        load_twitter_gmner(DATA_V1, "test", tags="strict")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        samples = load_twitter_gmner(DATA_V1, "test", on_error="skip", tags="strict")
    rep = samples.report
    assert len(samples) == 1500
    assert rep.skipped["I- tags with no B-"] == 1
    assert rep.entities == 2542  # the orphan I- token is read as O
    assert len(rep.unmatched_names) == 10
    assert ("15427", "Nike SNKRS") in rep.unmatched_names
    assert any("match no entity" in str(x.message) for x in w)
    assert "10 xml names matched no entity" in rep.summary()


def test_conlleval_i_tag_after_o_or_other_type_begins_entity(tmp_path):
    txt = "IMGID:1\nKevin\tO\nDurant\tI-PER\nNBA\tB-ORG\nFinals\tI-OTHER\nx\tI-OTHER\n\n"
    s = load_twitter_gmner(make_release(tmp_path / "r", txt, {}), "train")
    assert s[0].entities == (Entity("Durant", "PER"), Entity("NBA", "ORG"), Entity("Finals x", "OTHER"))
    assert s[0].labels == ("O", "B-PER", "B-ORG", "B-OTHER", "I-OTHER")
    assert s.report.repaired["I- tags beginning an entity (conlleval)"] == 2
    with pytest.raises(ValueError, match="tags must be one of"):
        load_twitter_gmner(tmp_path / "r", "train", tags="loose")


XML = """<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"""
OBJ = ("<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
       "<ymax>{b[3]}</ymax></bndbox></object>")


def make_release(root: Path, txt: str, xmls: dict) -> Path:
    (root / "txt").mkdir(parents=True)
    (root / "xml").mkdir()
    (root / "txt" / "train.txt").write_text(txt)
    for pid, (size, objs) in xmls.items():
        body = XML.format(w=size[0], h=size[1], objs="".join(OBJ.format(n=n, b=b) for n, b in objs))
        (root / "xml" / f"{pid}.xml").write_text(body)
    return root


GOOD = "IMGID:1\nKevin\tB-PER\nDurant\tI-PER\nand\tO\nNBA\tB-ORG\n\nIMGID:2\nhello\tO\n\n"


def test_fixture_reads_and_multi_box(tmp_path):
    root = make_release(tmp_path / "r", GOOD, {"1": ((100, 50), [("Kevin Durant", (1, 2, 30, 40)),
                                                               ("Kevin Durant", (50, 2, 90, 40))])})
    s = load_twitter_gmner(root, "train")
    assert [x.id for x in s] == ["1", "2"]
    assert s[0].entities == (Entity("Kevin Durant", "PER", [(1, 2, 30, 40), (50, 2, 90, 40)]),
                             Entity("NBA", "ORG"))
    assert s[0].labels == ("B-PER", "I-PER", "O", "B-ORG")
    assert s[1].entities == () and s[1].image_size is None


@pytest.mark.parametrize("txt,xmls,pattern,kind", [
    ("IMGID:1\nKevin Durant\n\n", {}, r"train\.txt:2: expected 'token<TAB>tag'", "lines without a tab"),
    ("IMGID:1\nKevin\tO\nDurant\tI-PER\n\n", {}, r"train\.txt:3: tag I-PER after O has no B-PER",
     "I- tags with no B-"),
    ("IMGID:1\nKevin\tB-ORG\nDurant\tI-PER\n\n", {}, r"train\.txt:3: tag I-PER after ORG", "I- tags with no B-"),
    ("IMGID:1\nKevin\tB-FOO\n\n", {}, r"train\.txt:2: unknown tag 'B-FOO'", "unknown tags"),
    ("Kevin\tB-PER\n\n", {}, r"train\.txt:1: token line before any 'IMGID", "posts without IMGID"),
    ("IMGID:1\nKevin\tB-PER\n\n", {"1": ((100, 50), [("Kevin", (30, 2, 30, 40))])},
     r"1\.xml: object 1 \('Kevin'\): box .* x2<=x1", "boxes with x2<=x1 or y2<=y1"),
])
def test_malformed_input_raises_or_skips(tmp_path, txt, xmls, pattern, kind):
    root = make_release(tmp_path / "r", txt, xmls)
    with pytest.raises(GMNERFormatError, match=pattern):
        load_twitter_gmner(root, "train", tags="strict")
    s = load_twitter_gmner(root, "train", on_error="skip", tags="strict")
    assert s.report.skipped[kind] >= 1
    assert kind in s.report.summary()


def test_unreadable_xml_and_missing_image(tmp_path):
    root = make_release(tmp_path / "r", GOOD, {})
    (root / "xml" / "1.xml").write_text("<annotation><size>")  # truncated
    with pytest.raises(GMNERFormatError, match=r"1\.xml: unreadable Pascal-VOC xml"):
        load_twitter_gmner(root, "train")
    s = load_twitter_gmner(root, "train", on_error="skip")
    assert [x.id for x in s] == ["2"] and s.report.skipped["unreadable xml files"] == 1

    root2 = make_release(tmp_path / "r2", GOOD, {})
    images = tmp_path / "img"
    images.mkdir()
    from PIL import Image
    Image.new("RGB", (64, 48)).save(images / "1.jpg")
    with pytest.raises(GMNERFormatError, match=r"2\.jpg: image of post 2 not found"):
        load_twitter_gmner(root2, "train", images)
    s = load_twitter_gmner(root2, "train", images, on_error="skip")
    assert [x.id for x in s] == ["1"] and s[0].image_size == (64, 48)
    assert s.report.skipped["posts with a missing image"] == 1


def test_real_image_size_differs_from_xml(tmp_path):
    root = make_release(tmp_path / "r", GOOD, {"1": ((100, 50), [("NBA", (10, 10, 50, 40))])})
    images = tmp_path / "img"
    images.mkdir()
    from PIL import Image
    Image.new("RGB", (200, 100)).save(images / "1.jpg")
    Image.new("RGB", (10, 10)).save(images / "2.jpg")
    s = load_twitter_gmner(root, "train", images)
    assert s[0].image_size == (200, 100)
    assert s[0].entities[1].boxes == ((20.0, 20.0, 100.0, 80.0),)
    assert s.report.repaired["boxes rescaled to the real image size"] == 1


def test_missing_split_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"txt/nope\.txt"):
        load_twitter_gmner(tmp_path, "nope")
