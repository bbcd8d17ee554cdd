"""PNG plots of benchmark results (matplotlib, the ``plot`` extra): search latency versus video
length and throughput versus queries per call, from ``results/search.json``'s summary."""

from __future__ import annotations

from pathlib import Path

PLOTS_DIR = Path(__file__).resolve().parent / "plots"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, name: str) -> Path:
    PLOTS_DIR.mkdir(parents=True, exist_ok=True)
    path = PLOTS_DIR / name
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str, name: str) -> Path:
    """Log axes, labels, grid and legend; saved as ``name`` under PLOTS_DIR."""
    if ax.get_xscale() == "linear":
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = _save(fig, name)
    plt.close(fig)
    return path


def search_plots(warm: list[dict], title: str) -> list[tuple[str, str]]:
    """Latency-vs-length and throughput-vs-batch PNGs from bench_search's ``warm`` rows
    (``hours``, ``batch``, ``median_s``, ``p10_s``, ``p90_s``); returns (caption, file)."""
    plt = _pyplot()
    if plt is None or not warm:
        return []
    batches = sorted({r["batch"] for r in warm})
    hours = sorted({r["hours"] for r in warm})
    fig, ax = plt.subplots(figsize=(6, 4))
    for b in batches:
        rows = sorted((r for r in warm if r["batch"] == b), key=lambda r: r["hours"])
        x = [r["hours"] for r in rows]
        y = [r["median_s"] / b for r in rows]
        err = [[(r["median_s"] - r["p10_s"]) / b for r in rows],
               [(r["p90_s"] - r["median_s"]) / b for r in rows]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{b} queries per call")
    a = _finish(plt, fig, ax, "video length (hours)", "seconds per query (median, p10-p90)",
                f"Search latency vs video length\n{title}", "search_latency_vs_length.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for h in hours:
        rows = sorted((r for r in warm if r["hours"] == h), key=lambda r: r["batch"])
        label = f"{h * 60:.0f} min video" if h < 1 else f"{h:g} h video"
        ax.plot([r["batch"] for r in rows], [r["batch"] / r["median_s"] for r in rows],
                marker="o", label=label)
    ax.set_xscale("log", base=2)
    b = _finish(plt, fig, ax, "queries per call", "queries per second",
                f"Search throughput vs batch\n{title}", "search_throughput_vs_batch.png")
    return [("Search latency per query versus video length", f"plots/{a.name}"),
            ("Search throughput versus queries per call", f"plots/{b.name}")]
