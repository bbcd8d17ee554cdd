"""The bundle manifest: read and verify an exported model bundle without torch or onnx.

A bundle is a directory holding ONNX graphs, the tokenizer and ``manifest.json``, which
describes everything the engine needs to run them: the model config, feature widths, the
time grid, strides and length multiple, post-processing defaults, every graph's inputs and
outputs (dtype, shape with named dynamic axes) and the sha256 of every file. The search
engine loads bundles through this module only, so it imports json, hashlib and numpy-level
gazenlq modules and nothing heavier.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from gazenlq.bundle.hashes import HashMemo, sha256_file
from gazenlq.bundle.postprocess import PostprocessConfig
from gazenlq.errors import GazeNLQError
from gazenlq.timegrid import TimeGrid

FORMAT = "gazenlq.bundle"
VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16")
AXES = {
    "batch": "rows: queries for text and ground, clips (windows) for video",
    "length": "feature steps; for ground a multiple of length_multiple (pad with mask False)",
    "text_length": "query tokens, special tokens included",
    "points": "prediction points of all levels, finest first: sum of length / stride",
}


REQUIRED_IO = {
    "text": (("input_ids", "attention_mask"), ("features",)),
    "video": (("video", "mask"), ("video_emb",)),
    "ground": (("video_emb", "mask", "tokens", "text_mask"),
               ("logits", "distances", "point_mask")),
}
"""Inputs and outputs the engine feeds and reads by name, per graph (gaze and coarse names
are optional: the variant and the coarse stage decide)."""


class BundleError(GazeNLQError):
    """A bundle is missing, incomplete, modified or from an unknown format version."""


def bundle_file(bundle_dir: str | Path, name: object) -> Path:
    """The path of the file ``name`` (as a manifest writes it: relative, ``/``-separated)
    inside ``bundle_dir``; refused unless it stays inside: no absolute path or drive, no
    ``..``, no empty or ``.`` component, no backslash or NUL, and no symlink (of the file or
    of a directory on the way) leading out of the bundle. Every file a bundle reader opens
    goes through here."""
    root = Path(bundle_dir)
    where = f"{root / MANIFEST}: file name {name!r}"
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where} is not a relative path inside the bundle")
    if "\\" in name or "\0" in name or PureWindowsPath(name).drive or name.startswith("/"):
        raise BundleError(f"{where} is not a relative path inside the bundle")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BundleError(f"{where} must not hold '..', '.' or empty components")
    inside = root.resolve()
    path = inside.joinpath(*PurePosixPath(name).parts)
    try:
        path.resolve().relative_to(inside)
    except ValueError:
        raise BundleError(f"{where} leads out of the bundle (symlink to "
                          f"{path.resolve()})") from None
    except OSError as exc:  # a symlink loop
        raise BundleError(f"{where}: cannot be resolved ({exc.strerror})") from None
    return root / name


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: numpy dtype name and shape (``str`` = named dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle."""

    name: str
    file: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        return cls(str(d["name"]), str(d["file"]), str(d["precision"]),
                   tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   tuple(TensorSpec.from_dict(t) for t in d["outputs"]))


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` says; ``graphs[precision][name]``."""

    variant: str
    model: dict[str, Any]
    dims: dict[str, int | None]
    time_grid: TimeGrid
    strides: tuple[int, ...]
    length_multiple: int
    max_len: int
    text: dict[str, Any]
    postprocess: PostprocessConfig
    graphs: dict[str, dict[str, GraphSpec]]
    files: dict[str, FileEntry]
    exporter: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION
    coarse: dict[str, Any] | None = None
    """The coarse stage of coarse-to-fine search (``span`` steps per span embedding, ``dim``,
    ``gaze``), whose embeddings the text and video graphs output; None: exhaustive only."""
    looked_at: dict[str, Any] | None = None
    """The semantic gaze-target head: the text graph's ``noun_emb`` and the video graph's
    per-step ``looked_at_emb`` (``dim`` values, compared by cosine similarity), the
    head's inverse temperature ``scale`` and its training vocabulary ``objects``; None:
    the bundle has no looked-at head."""

    @property
    def uses_gaze(self) -> bool:
        return self.variant != "none"

    @property
    def levels(self) -> int:
        return len(self.strides)

    def graph(self, name: str, precision: str = "fp32") -> GraphSpec:
        """The graph ``name`` (text, video, ground) at ``precision``."""
        try:
            return self.graphs[precision][name]
        except KeyError:
            have = ", ".join(f"{n} ({p})" for p, g in self.graphs.items() for n in g)
            hint = "; re-export it with gaze-export --fp16" if precision == "fp16" else ""
            raise BundleError(f"the bundle has no {precision} {name} graph (it has: {have})"
                              + hint) from None

    @property
    def tokenizer(self) -> str:
        """The tokenizer's file name in the bundle."""
        return str(self.text.get("tokenizer", "tokenizer.json"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["postprocess"] = self.postprocess.to_dict()
        return {"format": FORMAT, "version": d.pop("version"), **d, "axes": AXES}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        return cls(
            variant=str(d["variant"]), model=dict(d["model"]), dims=dict(d["dims"]),
            time_grid=TimeGrid(**d["time_grid"]), strides=tuple(d["strides"]),
            length_multiple=int(d["length_multiple"]), max_len=int(d["max_len"]),
            text=dict(d["text"]), postprocess=PostprocessConfig.from_dict(d["postprocess"]),
            graphs={p: {n: GraphSpec.from_dict(g) for n, g in gs.items()}
                    for p, gs in d["graphs"].items()},
            files={f: FileEntry(**e) for f, e in d["files"].items()},
            exporter=dict(d.get("exporter", {})), source=dict(d.get("source", {})),
            validation=dict(d.get("validation", {})), version=int(d["version"]),
            coarse=None if d.get("coarse") is None else dict(d["coarse"]),
            looked_at=None if d.get("looked_at") is None else dict(d["looked_at"]))


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256_file(path), path.stat().st_size)


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Parse ``bundle_dir/manifest.json``; a newer format version is refused."""
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a gazenlq bundle (no {MANIFEST})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleError(f"{path}: not a gazenlq bundle manifest (format is not {FORMAT!r})")
    version = raw.get("version")
    if not isinstance(version, int):
        raise BundleError(f"{path}: manifest has no integer format version")
    if version > VERSION:
        raise BundleError(f"{path}: bundle format version {version} is newer than this gazenlq "
                          f"reads ({VERSION}); upgrade gazenlq or re-export the bundle")
    try:
        return Manifest.from_dict(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from None


def verify_bundle(bundle_dir: str | Path) -> Manifest:
    """Read the manifest and check it against the bundle: every file it names (graphs,
    tokenizer, anything listed) lies inside the bundle (:func:`bundle_file`), the graphs and
    the tokenizer are listed with a sha256, every graph declares the I/O the engine uses, and
    every listed file is present with its size and sha256 (a file unchanged since this user
    last hashed it is not read again: ``bundle.hashes``)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    where = bundle_dir / MANIFEST
    paths = {name: bundle_file(bundle_dir, name) for name in manifest.files}
    used = [manifest.tokenizer, *(s.file for gs in manifest.graphs.values() for s in gs.values())]
    for name in used:
        bundle_file(bundle_dir, name)
        if name not in manifest.files:
            raise BundleError(f"{where}: file {name} has no sha256 entry; re-export the bundle")
    for graphs in manifest.graphs.values():
        for key, spec in graphs.items():
            inputs, outputs = REQUIRED_IO.get(key, ((), ()))
            have = ({t.name for t in spec.inputs}, {t.name for t in spec.outputs})
            for kind, want, got in (("input", inputs, have[0]), ("output", outputs, have[1])):
                missing = [n for n in want if n not in got]
                if missing:
                    raise BundleError(f"{where}: graph {spec.file} declares no {kind} "
                                      f"{missing[0]!r} (it has {', '.join(sorted(got))})")
    memo = HashMemo()
    for name, entry in manifest.files.items():
        path = paths[name]
        if not path.is_file():
            raise BundleError(f"{path}: missing (listed in {MANIFEST}); re-export the bundle")
        if path.stat().st_size != entry.bytes or memo.sha256(path) != entry.sha256:
            raise BundleError(f"{path}: sha256 does not match {MANIFEST} (modified or "
                              "corrupted); re-export the bundle")
    memo.save()
    return manifest
