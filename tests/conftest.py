"""Shared fixtures: a small EgoSim dataset, the real Ego4D annotation file when present."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NLQ_VAL = REPO.parent / "shared" / "data" / "ego4d_nlq" / "nlq_val.json"
BIN = Path(sys.executable).parent

os.environ.setdefault("GAZENLQ_NO_PROGRESS", "1")
# the default bundle and the bundle-hash memo live in the user's data and cache
# directories: tests (and the commands they start) get their own, empty ones, and no bundle
# from the environment; both are removed when the session ends
for _var, _prefix in (("XDG_DATA_HOME", "gazenlq-test-data-"),
                      ("XDG_CACHE_HOME", "gazenlq-test-cache-")):
    os.environ[_var] = tempfile.mkdtemp(prefix=_prefix)
    atexit.register(shutil.rmtree, os.environ[_var], ignore_errors=True)
os.environ.pop("GAZENLQ_BUNDLE", None)


@pytest.fixture(scope="session")
def nlq_val() -> Path:
    if not NLQ_VAL.is_file():
        pytest.skip(f"real Ego4D NLQ val annotations not found at {NLQ_VAL} "
                    "(they live in ../shared, beside a checkout; not shipped with the project)")
    return NLQ_VAL


@pytest.fixture(scope="session")
def egosim_small(tmp_path_factory):
    """Six EgoSim sessions (about half with gaze maps) and their manifest."""
    from gazenlq.synth.config import EgoSimConfig
    from gazenlq.synth.dataset import generate

    out = tmp_path_factory.mktemp("egosim_small")
    cfg = EgoSimConfig(seed=3, sessions=6)
    return cfg, out, generate(cfg, out)


def script(name: str) -> str:
    """Path of one of the project's console scripts in this environment."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"console script {name} not installed in {BIN}; run `make setup`")
    return str(path)


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """Tiny EgoSim data (8 sessions, all eye-tracked) and a tiny GazeNLQ ('gaze') trained on
    it: ``(DataPaths, stage2/best checkpoint)``; shared by export and engine tests."""
    import torch

    from gazenlq.synth.config import EgoSimConfig
    from gazenlq.synth.dataset import generate
    from gazenlq.training.run import DataPaths, train
    from tests.test_training_run import tiny_config

    out = tmp_path_factory.mktemp("tiny_trained")
    generate(EgoSimConfig(seed=21, sessions=8, gaze_fraction=1.0), out / "egosim")
    data = DataPaths.egosim(out / "egosim")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(tiny_config(), data, out / "run", variant="gaze", seed=0, quiet=True)
    finally:
        torch.set_num_threads(threads)
    return data, out / "run" / "stage2" / "best"


@pytest.fixture(scope="session")
def tiny_bundle(tiny_trained, tmp_path_factory):
    """The tiny checkpoint exported (and validated) as an fp32 bundle."""
    from gazenlq.export.exporter import export_bundle

    bundle = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    export_bundle(tiny_trained[1], bundle, threads=1)
    return bundle


def reexported_copy(bundle: Path, dst: Path) -> Path:
    """A copy of ``bundle`` whose video graph is re-saved with another doc string: the same
    model under another sha256, as a re-export of it would be (a bundle whose index and
    caches must not be mistaken for the original's)."""
    import json
    import shutil

    import onnx

    from gazenlq.bundle.manifest import sha256_file

    shutil.copytree(bundle, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    video_file = manifest["graphs"]["fp32"]["video"]["file"]
    proto = onnx.load(dst / video_file)
    proto.doc_string = "re-exported"
    onnx.save(proto, dst / video_file)
    manifest["files"][video_file] = {"sha256": sha256_file(dst / video_file),
                                     "bytes": (dst / video_file).stat().st_size}
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst
