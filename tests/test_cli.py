"""Every console script: a useful --help; usage errors are one line with exit code 2."""

import subprocess
import sys

import pytest

from tests.conftest import script

COMMANDS = ["gaze-synth", "gaze-store", "gaze-train", "gaze-export", "gaze-search",
            "gaze-eval", "gaze-ingest"]


@pytest.mark.parametrize("name", COMMANDS)
def test_help(name):
    out = subprocess.run([script(name), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage:" in out.stdout and len(out.stdout) > 200


@pytest.mark.parametrize("argv,needle", [
    (["gaze-synth"], "Missing argument"),
    (["gaze-synth", "x", "--sessions", "-1"], "--sessions"),
    (["gaze-synth", "x", "--difficulty", "extreme"], "--difficulty"),
    (["gaze-store", "frobnicate"], "No such command"),
])
def test_usage_errors_are_one_line(argv, needle):
    out = subprocess.run([script(argv[0]), *argv[1:]], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and needle in out.stderr, out.stderr


def test_synth_cli_end_to_end(tmp_path):
    out = subprocess.run([script("gaze-synth"), str(tmp_path / "ds"), "--sessions", "3",
                          "--seed", "9", "--clutter", "1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "split" in out.stdout and "gaze-store info" in out.stdout
    stores = sorted((tmp_path / "ds" / "stores").glob("*.zarr"))
    assert len(stores) == 3
    info = subprocess.run([script("gaze-store"), "info", str(stores[0])], capture_output=True,
                          text=True)
    assert info.returncode == 0 and "video_features" in info.stdout


def test_pending_zarr_reads_at_exit_do_not_add_lines_to_the_error(tmp_path):
    """A failed chunk read can leave sibling reads pending on zarr's asyncio loop; asyncio's
    "Task was destroyed but it is pending!" at exit must not follow the one-line error."""
    code = '''
import asyncio, sys
import typer
from gazenlq.cli.common import make_app, run
from gazenlq.errors import GazeNLQError

app = make_app("test")
PENDING = []

@app.command()
def main() -> None:
    loop = asyncio.new_event_loop()
    async def never():
        await asyncio.sleep(3600)
    PENDING.append(loop.create_task(never()))
    loop.run_until_complete(asyncio.sleep(0))
    raise GazeNLQError("x.zarr: array 'video_features' cannot be read")

run(app, "t", sys.argv[1:])
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr == "error: x.zarr: array 'video_features' cannot be read\n", out.stderr
