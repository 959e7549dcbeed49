"""The task's data model (paper Sec. 3, Eq. 1-2).

A GMNER output is a set of triples (e_i, t_i, l_i): an entity span from the sentence, a type from
{PER, LOC, ORG, OTHER} and a location that is a box (x1, y1, x2, y2) or None (Eq. 2).

* `Entity` is one triple. ``boxes`` is a tuple of (x1, y1, x2, y2) tuples; the empty tuple means
  "None" (ungrounded). A gold entity may carry several boxes (Twitter-GMNER has entities with 2+
  boxes); a predicted entity carries at most one.
* `Sample` is one post: id, tokens (the sentence is the tokens joined by single spaces), BIO labels,
  image path(s), image size(s) as (width, height) and its gold entities.

Boxes are in original-image pixels unless a function says otherwise; `mcr_swift.core.coords` owns every
conversion to and from the coordinate space a model emits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

Box = Tuple[float, float, float, float]

#: The four Twitter-GMNER entity types, in the paper's order.
ENTITY_TYPES: Tuple[str, ...] = ("PER", "LOC", "ORG", "OTHER")


def _as_box(value: Any) -> Box:
    if len(value) != 4:
        raise ValueError(f"a box needs 4 numbers (x1, y1, x2, y2), got {value!r}")
    box = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"box has a non-finite coordinate: {value!r}")
    return box  # type: ignore[return-value]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _normalise_boxes(boxes: Any) -> Tuple[Box, ...]:
    if boxes is None:
        return ()
    boxes = tuple(boxes)
    if len(boxes) == 4 and all(_is_number(v) for v in boxes):
        # A single box given flat: Entity("x", "PER", (1, 2, 3, 4)).
        return (_as_box(boxes),)
    return tuple(_as_box(b) for b in boxes)


@dataclass(frozen=True)
class Entity:
    """One (span, type, location) triple. ``Entity("Kevin Durant", "PER", ((10, 20, 50, 80),))``.

    ``boxes`` may also be given as one flat box ``(x1, y1, x2, y2)`` or ``None``; it is stored as a
    tuple of float 4-tuples, empty for an ungrounded entity.
    """

    text: str
    type: str
    boxes: Tuple[Box, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", _normalise_boxes(self.boxes))

    @property
    def located(self) -> bool:
        """True when the entity has at least one box (l_i != None, Eq. 2)."""
        return bool(self.boxes)

    @property
    def box(self) -> Optional[Box]:
        """The first box, or None. For a prediction this is its location."""
        return self.boxes[0] if self.boxes else None

    def to_dict(self) -> Dict[str, Any]:
        return {"entity": self.text, "type": self.type, "boxes": [list(b) for b in self.boxes]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Entity":
        """Inverse of `to_dict`; also accepts a single ``bbox`` key (None or a box)."""
        if "boxes" in d:
            boxes = d["boxes"]
        else:
            boxes = d.get("bbox")
        return cls(str(d["entity"]), str(d["type"]), boxes)


@dataclass(frozen=True)
class Sample:
    """One post: ``sentence`` is ``" ".join(tokens)``; ``image_sizes[i]`` is (width, height) of
    ``images[i]`` in pixels (None where unknown)."""

    id: str
    tokens: Tuple[str, ...]
    entities: Tuple[Entity, ...] = ()
    images: Tuple[Optional[str], ...] = ()
    image_sizes: Tuple[Optional[Tuple[int, int]], ...] = ()
    labels: Tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "entities", tuple(self.entities))
        object.__setattr__(self, "images", tuple(self.images))
        object.__setattr__(self, "image_sizes",
                           tuple(None if s is None else (int(s[0]), int(s[1])) for s in self.image_sizes))
        object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def sentence(self) -> str:
        return " ".join(self.tokens)

    @property
    def image(self) -> Optional[str]:
        return self.images[0] if self.images else None

    @property
    def image_size(self) -> Optional[Tuple[int, int]]:
        return self.image_sizes[0] if self.image_sizes else None


def entities_from_dicts(items: Iterable[Mapping[str, Any]]) -> list:
    return [Entity.from_dict(d) for d in items]


def entities_to_dicts(entities: Sequence[Entity]) -> list:
    return [e.to_dict() for e in entities]
