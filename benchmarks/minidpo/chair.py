"""CHAIR-style hallucination metrics, exact on generated scenes (one shape per image).

A caption's mentions are read off its words: colours, shapes, positions and, when it names
one, the background. Each mention is checked against the scene's true attributes:

- a wrong colour / shape / position / background is an attribute hallucination;
- every shape word after the first names an object that is not there (the scene holds one
  shape): an object hallucination.

CHAIR_i = hallucinated mentions / all mentions; CHAIR_s = captions with at least one
hallucination / captions (Rohrbach et al.'s two CHAIR numbers, with mentions in place of
COCO object words). Also reported: the share of captions that state colour, shape and
position all correctly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from laion_spark.demo.synthetic import BACKGROUNDS, COLORS, POSITIONS, SHAPES, Attributes

_POS = {p: p for p in POSITIONS} | {"middle": "center"}


@dataclass
class Mentions:
    colors: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)
    backgrounds: list[str] = field(default_factory=list)


def mentions(caption: str) -> Mentions:
    m = Mentions()
    words = re.findall(r"[a-z]+", (caption or "").lower())
    for i, w in enumerate(words):
        if w in SHAPES:
            m.shapes.append(w)
        elif w in COLORS:
            m.colors.append(w)
        elif w in _POS:
            m.positions.append(_POS[w])
        elif w in BACKGROUNDS and i >= 2 and words[i - 2] == "background":
            m.backgrounds.append(w)  # "the background is <bg>"
    return m


@dataclass
class Judgement:
    mentions: int = 0
    hallucinated: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    all_correct: bool = False

    @property
    def any(self) -> bool:
        return self.hallucinated > 0


def judge(caption: str, truth: Attributes) -> Judgement:
    m = mentions(caption)
    j = Judgement()

    def check(kind: str, said: list[str], true: str) -> None:
        for value in said:
            j.mentions += 1
            if value != true:
                j.hallucinated += 1
                j.kinds[kind] = j.kinds.get(kind, 0) + 1

    check("color", m.colors[:1], truth.color)
    check("shape", m.shapes[:1], truth.shape)
    check("position", m.positions[:1], truth.position)
    check("background", m.backgrounds[:1], truth.background)
    # more shapes than the one there: objects that are not in the image
    extra = len(m.shapes[1:])
    j.mentions += extra
    j.hallucinated += extra
    if extra:
        j.kinds["absent_object"] = extra
    # a second colour/position for the one object is a hallucination too
    for kind, said in (("color", m.colors[1:]), ("position", m.positions[1:])):
        j.mentions += len(said)
        bad = sum(1 for v in said if v != getattr(truth, kind))
        j.hallucinated += bad
        if bad:
            j.kinds[kind] = j.kinds.get(kind, 0) + bad
    j.all_correct = (
        m.colors[:1] == [truth.color]
        and m.shapes[:1] == [truth.shape]
        and m.positions[:1] == [truth.position]
    )
    return j


def chair(captions: list[str], truths: list[Attributes]) -> dict[str, float]:
    """CHAIR_i, CHAIR_s, all-correct share and hallucinations by kind (per caption)."""
    js = [judge(c, t) for c, t in zip(captions, truths, strict=True)]
    n = max(1, len(js))
    total = sum(j.mentions for j in js)
    out = {
        "chair_i": sum(j.hallucinated for j in js) / max(1, total),
        "chair_s": sum(j.any for j in js) / n,
        "all_correct": sum(j.all_correct for j in js) / n,
        "mentions_per_caption": total / n,
    }
    for kind in ("color", "shape", "position", "background", "absent_object"):
        out[f"per_caption_{kind}"] = sum(j.kinds.get(kind, 0) for j in js) / n
    return out
