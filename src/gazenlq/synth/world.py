"""EgoSim's world: places, objects, verbs and people, and the hidden concept -> feature maps.

The vocabulary and phrasings are EgoSim's own. A concept's direction in the pooled features
and an object's (or person's) direction in the per-cell spatial features are random
(seeded), or with ``text_align`` > 0 a mix of that and a fixed random projection of the
default text encoder's embedding of its name (``synth/concepts.py``), like the
video-language features GroundNLQ uses. The two spaces use different projections, so
knowing one map says nothing about the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLACES = ("kitchen", "garage", "living room", "bathroom", "bedroom", "garden", "workshop",
          "office", "laundry room", "hallway")

# name, plural, category, colour
OBJECTS: tuple[tuple[str, str, str, str], ...] = (
    ("bulb", "bulbs", "electrical item", "white"), ("extension cord", "extension cords",
    "electrical item", "orange"), ("battery", "batteries", "electrical item", "silver"),
    ("charger", "chargers", "electrical item", "black"), ("phone", "phones", "device", "black"),
    ("remote", "remotes", "device", "grey"), ("laptop", "laptops", "device", "silver"),
    ("headphones", "headphones", "device", "blue"), ("hammer", "hammers", "tool", "red"),
    ("screwdriver", "screwdrivers", "tool", "yellow"), ("wrench", "wrenches", "tool", "silver"),
    ("tape measure", "tape measures", "tool", "yellow"), ("drill", "drills", "tool", "green"),
    ("saw", "saws", "tool", "orange"), ("pliers", "pliers", "tool", "red"),
    ("knife", "knives", "utensil", "silver"), ("spoon", "spoons", "utensil", "wooden"),
    ("spatula", "spatulas", "utensil", "black"), ("cutting board", "cutting boards",
    "utensil", "wooden"), ("pan", "pans", "cookware", "black"), ("pot", "pots", "cookware",
    "steel"), ("kettle", "kettles", "cookware", "white"), ("mug", "mugs", "dish", "green"),
    ("plate", "plates", "dish", "white"), ("bowl", "bowls", "dish", "blue"),
    ("glass", "glasses", "dish", "clear"), ("onion", "onions", "food", "purple"),
    ("tomato", "tomatoes", "food", "red"), ("carrot", "carrots", "food", "orange"),
    ("apple", "apples", "food", "green"), ("bread", "loaves of bread", "food", "brown"),
    ("egg", "eggs", "food", "white"), ("towel", "towels", "textile", "blue"),
    ("shirt", "shirts", "clothing", "white"), ("sock", "socks", "clothing", "grey"),
    ("jacket", "jackets", "clothing", "green"), ("shoe", "shoes", "clothing", "brown"),
    ("book", "books", "paper item", "red"), ("notebook", "notebooks", "paper item", "yellow"),
    ("envelope", "envelopes", "paper item", "white"), ("keys", "keys", "personal item",
    "silver"), ("wallet", "wallets", "personal item", "brown"), ("glasses case",
    "glasses cases", "personal item", "black"), ("watering can", "watering cans",
    "garden tool", "green"), ("shovel", "shovels", "garden tool", "grey"),
    ("plant pot", "plant pots", "garden tool", "terracotta"), ("soap", "soap bars",
    "toiletry", "pink"), ("toothbrush", "toothbrushes", "toiletry", "blue"),
    ("bottle", "bottles", "container", "clear"), ("jar", "jars", "container", "clear"),
    ("box", "boxes", "container", "brown"), ("bag", "bags", "container", "black"),
    ("drawer", "drawers", "furniture", "white"), ("cabinet", "cabinets", "furniture", "grey"),
    ("fridge", "fridges", "appliance", "white"), ("washing machine", "washing machines",
    "appliance", "white"),
)
CONTAINERS = ("bottle", "jar", "box", "bag", "drawer", "cabinet", "fridge", "washing machine",
              "bowl", "pot")
OPENABLE = ("bottle", "jar", "box", "bag", "drawer", "cabinet", "fridge", "washing machine",
            "laptop", "book", "notebook", "envelope")

# verb id -> (past tense, gerund, base form)
VERBS: dict[str, tuple[str, str, str]] = {
    "put": ("put down", "putting down", "put down"),
    "take": ("picked up", "picking up", "pick up"),
    "put_in": ("put", "putting", "put"), "open": ("opened", "opening", "open"),
    "close": ("closed", "closing", "close"), "cut": ("cut", "cutting", "cut"),
    "wash": ("washed", "washing", "wash"), "use": ("used", "using", "use"),
    "hold": ("held", "holding", "hold"), "fold": ("folded", "folding", "fold"),
    "fix": ("fixed", "fixing", "fix"), "receive": ("was handed", "being handed", "get"),
    "talk": ("talked", "talking", "talk"),
}
CUTTABLE = ("onion", "tomato", "carrot", "apple", "bread", "envelope", "extension cord")
WASHABLE = ("mug", "plate", "bowl", "glass", "pan", "pot", "spoon", "knife", "cutting board",
            "towel", "shirt", "sock", "apple", "carrot", "tomato")
FOLDABLE = ("towel", "shirt", "sock", "jacket", "envelope", "bag")
FIXABLE = ("bulb", "extension cord", "charger", "laptop", "remote", "drill", "shoe", "drawer",
           "cabinet", "headphones")

PEOPLE = ("neighbour", "plumber", "friend", "delivery driver", "cousin", "colleague",
          "shop assistant", "child")


@dataclass(frozen=True)
class World:
    """Hidden feature directions of every concept, drawn from ``seed``.

    ``video_*`` live in the pooled grounding-feature space (``[*, Dv]``); ``cell_*`` in the
    per-cell space of the spatial gaze-estimator features (``[*, d_cell]``), a different map.
    """

    video_place: np.ndarray
    video_object: np.ndarray
    video_verb: np.ndarray
    video_person: np.ndarray
    cell_object: np.ndarray
    cell_person: np.ndarray
    cell_hand: np.ndarray
    cell_position: np.ndarray

    @classmethod
    def build(cls, seed: int, video_dim: int, cell_dim: int, text_align: float = 0.0
              ) -> World:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x57011D]))

        def unit(n: int, d: int) -> np.ndarray:
            v = rng.standard_normal((n, d))
            return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

        video = {kind: unit(n, video_dim) for kind, n in (
            ("place", len(PLACES)), ("object", len(OBJECTS)), ("verb", len(VERBS)),
            ("person", len(PEOPLE)))}
        cell = {"object": unit(len(OBJECTS), cell_dim), "person": unit(len(PEOPLE), cell_dim)}
        hand, position = unit(1, cell_dim)[0], unit(4, cell_dim)
        if text_align > 0:
            video = _aligned(video, [seed, 0x7E47], text_align)
            cell = _aligned(cell, [seed, 0xCE11], text_align)
        return cls(
            video_place=video["place"],
            video_object=video["object"],
            video_verb=video["verb"],
            video_person=video["person"],
            cell_object=cell["object"],
            cell_person=cell["person"],
            cell_hand=hand,
            cell_position=position,
        )


def _unit_rows(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _aligned(random: dict[str, np.ndarray], seed: list[int], align: float
             ) -> dict[str, np.ndarray]:
    """Mix each concept's random direction with a projection (drawn from ``seed``) of its
    name's text embedding, centred per kind so the shared component of all names carries
    no information."""
    from gazenlq.synth.concepts import text_embeddings

    text = text_embeddings()
    dim = next(iter(random.values())).shape[1]
    proj = np.random.default_rng(np.random.SeedSequence(seed)).standard_normal(
        (next(iter(text.values())).shape[1], dim))
    out = {}
    for kind, rand in random.items():
        e = text[kind].astype(np.float64)
        aligned = _unit_rows((e - e.mean(axis=0)) @ proj)
        out[kind] = _unit_rows(np.sqrt(align) * aligned
                               + np.sqrt(1 - align) * rand).astype(np.float32)
    return out


OBJECT_INDEX = {name: i for i, (name, *_rest) in enumerate(OBJECTS)}
VERB_INDEX = {v: i for i, v in enumerate(VERBS)}


def verbs_for(obj: str) -> list[str]:
    """Verbs that make sense with ``obj`` (``put_in`` takes it as the thing put)."""
    verbs = ["put", "take", "hold", "use"]
    if obj in OPENABLE:
        verbs += ["open", "close"]
    if obj in CUTTABLE:
        verbs.append("cut")
    if obj in WASHABLE:
        verbs.append("wash")
    if obj in FOLDABLE:
        verbs.append("fold")
    if obj in FIXABLE:
        verbs.append("fix")
    if obj not in ("drawer", "cabinet", "fridge", "washing machine"):
        verbs += ["put_in", "receive"]
    else:
        verbs = [v for v in verbs if v in ("open", "close", "use", "fix")]
    return verbs
