"""Checkpoints: safetensors weights + JSON config in one directory, written atomically.

Layout of ``<run>/<stage>/``:
- ``last/``: ``model.safetensors`` (EMA weights, what inference and export use),
  ``config.json``, and ``state/`` for an exact resume (raw weights, optimizer tensors,
  RNG state, trainer counters);
- ``best/``: the EMA weights of the best validation epoch and ``config.json``.
Never pickle: every tensor is in safetensors, everything else in JSON. ``config.json`` (written
last) records the sha256 of every other file (``"files"``); loading checks them, so a
truncated or altered file is one line naming it, never weights silently different.

Every ``config.json`` records the time grid of the stores the run trained on
(``"time_grid": {"fps", "window", "stride"}``): the model predicts in steps of that grid, so
the grid travels with it into the exported bundle (:func:`time_grid` reads it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gazenlq.atomic import atomic_dir
from gazenlq.bundle.hashes import sha256_file
from gazenlq.errors import GazeNLQError
from gazenlq.timegrid import TimeGrid

FORMAT = "gazenlq.checkpoint"
VERSION = 1
FILES = "files"
"""Key of the other files' sha256 in ``config.json`` (relative path -> digest)."""
TIME_GRID = "time_grid"
"""Key of the training stores' time grid in ``config.json``."""


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat tensors (``"<param>.<key>"``) plus JSON-able group settings."""
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": (v if torch.is_tensor(v) else torch.tensor(v))
               for pid, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                        meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save(path: Path, *, config: dict[str, Any], weights: dict[str, torch.Tensor],
         resume: dict[str, Any] | None = None) -> None:
    """Write a checkpoint directory atomically; ``resume`` holds ``raw``, ``optim`` (tensor
    dicts), ``rng`` (tensor dict) and ``trainer`` (JSON) for an exact resume."""
    with atomic_dir(path) as tmp:
        save_file(_contiguous(weights), tmp / "model.safetensors")
        if resume is not None:
            state = tmp / "state"
            state.mkdir()
            for name in ("raw", "optim", "rng"):
                save_file(_contiguous(resume[name]), state / f"{name}.safetensors")
            (state / "trainer.json").write_text(json.dumps(resume["trainer"], indent=1))
        files = {f.relative_to(tmp).as_posix(): sha256_file(f)
                 for f in sorted(tmp.rglob("*")) if f.is_file()}
        (tmp / "config.json").write_text(json.dumps(
            {"format": FORMAT, "version": VERSION, **config, FILES: files}, indent=1))


def load_config(path: Path) -> dict[str, Any]:
    """The checkpoint's JSON config (format and version checked)."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise GazeNLQError(f"{path}: not a gazenlq checkpoint (no config.json)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GazeNLQError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise GazeNLQError(f"{cfg_path}: not a gazenlq checkpoint config")
    if not isinstance(cfg.get("version", 0), int) or cfg.get("version", 0) > VERSION:
        raise GazeNLQError(f"{cfg_path}: checkpoint version {cfg['version']} is newer than "
                           f"this gazenlq reads ({VERSION}); upgrade gazenlq")
    return cfg


def grid_entry(grid: TimeGrid) -> dict[str, dict[str, float | int]]:
    """The ``config.json`` entry recording ``grid``."""
    return {TIME_GRID: {"fps": float(grid.fps), "window": int(grid.window),
                        "stride": int(grid.stride)}}


def time_grid(path: Path, config: dict[str, Any] | None = None) -> TimeGrid:
    """The time grid of the stores the checkpoint ``path`` was trained on (from ``config``,
    its already loaded ``config.json``, if given). A checkpoint without one is refused with
    one line: it predates recorded grids and its grid cannot be known."""
    config = load_config(path) if config is None else config
    cfg_path = Path(path) / "config.json"
    if TIME_GRID not in config:
        raise GazeNLQError(
            f"{cfg_path}: records no time grid (checkpoints made before the grid was "
            f"recorded); retrain it, or add its training stores' grid (gaze-store info "
            f'STORE), e.g. "{TIME_GRID}": {{"fps": 30.0, "window": 32, "stride": 16}}')
    value = config[TIME_GRID]
    try:
        grid = TimeGrid(float(value["fps"]), int(value["window"]), int(value["stride"]))
        exact = set(value) == {"fps", "window", "stride"} and \
            (grid.window, grid.stride) == (value["window"], value["stride"])
    except (TypeError, ValueError, KeyError):
        exact = False
    if not exact:
        raise GazeNLQError(f"{cfg_path}: {TIME_GRID} {json.dumps(value)} is not a time grid "
                           '({"fps": > 0, "window": int > 0, "stride": int > 0})')
    return grid


def _checked(path: Path, name: str) -> Path:
    """The file ``name`` of checkpoint ``path``, checked against the sha256 its
    ``config.json`` records (checkpoints from before the record are read unchecked)."""
    file = Path(path) / name
    if not file.is_file():
        raise GazeNLQError(f"{file}: missing from the checkpoint")
    record = load_config(path).get(FILES)
    if isinstance(record, dict) and name in record and sha256_file(file) != record[name]:
        raise GazeNLQError(f"{file}: sha256 differs from the one config.json records "
                           "(truncated or altered); use another checkpoint")
    return file


def _tensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    file = _checked(path, name)
    try:
        return load_file(file)
    except Exception as exc:  # safetensors raises its own error types on damaged files
        raise GazeNLQError(f"{file}: not a readable safetensors file "
                           f"({' '.join(str(exc).split())[:160]})") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return _tensors(path, "model.safetensors")


def load_resume(path: Path) -> dict[str, Any]:
    state = Path(path) / "state"
    if not (state / "trainer.json").is_file():
        raise GazeNLQError(f"{path}: checkpoint has no resume state")
    out: dict[str, Any] = {n: _tensors(path, f"state/{n}.safetensors")
                           for n in ("raw", "optim", "rng")}
    file = _checked(path, "state/trainer.json")
    try:
        out["trainer"] = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GazeNLQError(f"{file}: not valid JSON ({exc})") from None
    return out
