"""Shared benchmark plumbing: machine info, robust timing, result files, RESULTS.md rendering."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS_DIR = ROOT / "results"
RESULTS_MD = ROOT / "RESULTS.md"

_LIBS = ("numpy", "zarr", "numcodecs", "numba", "onnxruntime", "onnxruntime-gpu", "torch",
         "onnx", "tensorrt", "tokenizers")


def machine_info() -> dict:
    """CPU model, cores, memory, Python and library versions of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    versions = {}
    for lib in _LIBS:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": gpu_name(),
        "versions": versions,
    }


def cpu_label() -> str:
    """'<CPU model>, <n> cores' for plot titles."""
    m = machine_info()
    return f"{m['cpu']}, {m['cores']} cores"


def gpu_name() -> str | None:
    """Name of the first NVIDIA GPU via nvidia-smi, or None (never imports torch)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


@dataclass
class Timing:
    """Wall-clock statistics of repeated runs, in seconds."""

    median: float
    p10: float
    p90: float
    runs: int

    def ms(self) -> str:
        return f"{self.median * 1e3:.3f} ms [{self.p10 * 1e3:.3f}-{self.p90 * 1e3:.3f}]"


def measure(fn: Callable[[], object], *, repeat: int = 20, warmup: int = 2,
            min_time: float = 0.0) -> Timing:
    """Time ``fn`` ``repeat`` times (more while under ``min_time`` seconds) after warm-up."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * repeat:
            break
    times.sort()
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return Timing(statistics.median(times), q[0], q[-1], len(times))


@dataclass
class Section:
    """One table of a benchmark's report."""

    heading: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    notes: str = ""


def write_result(name: str, title: str, sections: list[Section], *, summary: dict | None = None,
                 command: str | None = None, plots: list[tuple[str, str]] | None = None) -> Path:
    """Write ``results/<name>.json`` (with machine info, the command and any plots, as
    (caption, path relative to benchmarks/)) and refresh RESULTS.md."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "title": title,
        "command": command or " ".join(["python -m benchmarks." + Path(sys.argv[0]).stem,
                                        *sys.argv[1:]]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "summary": summary or {},
        "sections": [asdict(s) for s in sections],
        "plots": [list(p) for p in plots or []],
    }
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    render_results_md()
    return path


def _table(columns: list[str], rows: list[list]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_results_md() -> Path:
    """Render every results/*.json into benchmarks/RESULTS.md (one section per benchmark)."""
    docs = [json.loads(p.read_text()) for p in sorted(RESULTS_DIR.glob("*.json"))]
    out = ["# Benchmark results", "",
           "Generated by `benchmarks/common.py` from `benchmarks/results/*.json`; every figure "
           "below comes from the command shown with its section, on the machine shown there. "
           "`make bench` (`python -m benchmarks`) reruns all of them for this machine's "
           "devices; GPU rows say why they were skipped where there is no GPU. Accuracy "
           "(EgoSim, 3 seeds) is in `docs/results.md`.", ""]
    for doc in docs:
        m = doc["machine"]
        out += [f"## {doc['title']}", "",
                f"- command: `{doc['command']}`",
                f"- run: {doc['date']} on {m['cpu']}, {m['cores']} cores, "
                f"{m.get('memory_gib')} GiB, GPU: {m.get('gpu') or 'none'}, Python {m['python']}",
                "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), ""]
        for s in doc["sections"]:
            out += [f"### {s['heading']}", "", _table(s["columns"], s["rows"]), ""]
            if s.get("notes"):
                out += [s["notes"], ""]
        for caption, file in doc.get("plots", []):
            out += [f"![{caption}]({file})", ""]
    tmp = RESULTS_MD.with_suffix(".md.tmp")
    tmp.write_text("\n".join(out))
    os.replace(tmp, RESULTS_MD)
    return RESULTS_MD


_SEARCH_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from gazenlq.cli.search import main
t_import = time.perf_counter() - t0
def kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
try:
    main(sys.argv[1:])
except SystemExit as e:
    assert not e.code
print(json.dumps({"seconds": time.perf_counter() - t0, "import": t_import,
                  "peak_kib": kib("VmHWM")}), file=sys.stderr)
"""


def engine_python() -> str:
    """The interpreter of an engine-only install (``pip install gazenlq[engine]``: what a
    search machine has, without PyTorch and the training extras), made once under
    ``benchmarks/out/engine-venv`` with the versions of ``constraints-dev.txt``."""
    import subprocess
    import venv

    home = ROOT / "out" / "engine-venv"
    python = home / "bin" / "python"
    if not (home / ".installed").is_file():
        venv.create(home, with_pip=True, clear=True)
        repo = ROOT.parent
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-c", str(repo / "constraints-dev.txt"), "-e", f"{repo}[engine]"],
                       check=True)
        (home / ".installed").touch()
    return str(python)


def search_child(args: list[str], python: str = sys.executable) -> tuple[dict, str, float]:
    """``gaze-search ARGS`` in a fresh process of ``python``: its self-report (seconds,
    seconds spent importing, peak memory in KiB, and ``first_output_s``: from starting the
    process to the first line of its answer on stdout), its stdout and the wall time
    including the interpreter's start and exit.

    The package's bytecode is compiled first, as any earlier run would have left it: an
    environment with ``PYTHONDONTWRITEBYTECODE`` (or a fresh checkout of an editable
    install) would otherwise recompile every module in every process."""
    import compileall
    import subprocess

    import gazenlq

    compileall.compile_dir(Path(gazenlq.__file__).parent, quiet=1)
    t0 = time.perf_counter()
    with subprocess.Popen([python, "-c", _SEARCH_CHILD, *args], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        first = proc.stdout.readline()
        first_s = time.perf_counter() - t0
        stdout = first + proc.stdout.read()
        stderr = proc.stderr.read()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, args, stdout, stderr)
    return ({**json.loads(stderr.strip().splitlines()[-1]), "first_output_s": first_s},
            stdout, wall)
