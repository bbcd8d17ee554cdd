"""Text embeddings of EgoSim's concept names, for video-language-aligned features.

Real grounding features (EgoVLP, InternVideo) come from video-language models: a clip's
feature lies near the text embedding of what it shows. EgoSim mimics this by building each
concept's pooled-feature direction partly from the default text encoder's
(all-MiniLM-L6-v2) sentence embedding of the concept's name (``Difficulty.text_align``).

The embeddings are computed once with ``python -m gazenlq.synth.concepts`` (needs PyTorch)
and shipped as ``concept_text.npz`` so that generating data stays numpy-only;
``tests/test_synth.py`` recomputes them and checks the shipped file.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from gazenlq.synth.world import OBJECTS, PEOPLE, PLACES, VERBS

TABLE = Path(__file__).with_name("concept_text.npz")
KINDS = ("place", "object", "verb", "person")


def concept_names() -> dict[str, list[str]]:
    """The phrase embedded for every concept, in the world's order."""
    return {"place": list(PLACES), "object": [o[0] for o in OBJECTS],
            "verb": [past for past, _gerund, _base in VERBS.values()],
            "person": list(PEOPLE)}


@cache
def text_embeddings() -> dict[str, np.ndarray]:
    """The shipped unit-norm embeddings ``{kind: [n, 384]}``, checked against the names."""
    with np.load(TABLE) as z:
        names = concept_names()
        for kind in KINDS:
            if z[f"{kind}_names"].tolist() != names[kind]:
                raise RuntimeError(f"{TABLE}: out of date for the {kind} names; regenerate "
                                   "it with `python -m gazenlq.synth.concepts`")
        return {kind: z[kind].astype(np.float32) for kind in KINDS}


def compute_text_embeddings() -> dict[str, np.ndarray]:
    """Sentence embeddings of every name with the default text encoder (PyTorch)."""
    import torch

    from gazenlq.text import TextEncoderConfig, build_text_encoder, load_tokenizer

    cfg = TextEncoderConfig()
    encoder, tokenizer = build_text_encoder(cfg), load_tokenizer(cfg)
    out = {}
    with torch.no_grad():
        for kind, names in concept_names().items():
            tok = tokenizer(names)
            emb = encoder.sentence_embedding(torch.from_numpy(tok.input_ids),
                                             torch.from_numpy(tok.attention_mask))
            out[kind] = emb.numpy().astype(np.float32)
    return out


def write_table(path: Path = TABLE) -> Path:
    """Recompute the embeddings and write them (with the names) atomically."""
    emb = compute_text_embeddings()
    names = concept_names()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **emb, **{f"{k}_names": np.array(names[k]) for k in KINDS})
    tmp.replace(path)
    return path


if __name__ == "__main__":
    print(write_table())
