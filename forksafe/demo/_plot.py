"""``forksafe demo --plot FILE.png``: server sessions over time, plain threads vs forksafe.

Both curves are measured in fresh interpreters by the ``threads_timeline``
scenario (:mod:`forksafe.demo._scenarios`): 50 short threads, started 10 ms apart,
one query each, joined; a sampler counts the server's sessions every ~20 ms,
with the cyclic garbage collector off (as between two collections of a real
process). matplotlib is an optional extra: ``pip install 'forksafe[plot]'``.
"""

from __future__ import annotations

from typing import Any, TextIO

__all__ = ["MATPLOTLIB_MISSING", "matplotlib_missing", "plot_timeline"]

MATPLOTLIB_MISSING = (
    "forksafe demo: --plot needs matplotlib, which is not installed: pip install 'forksafe[plot]'"
)


def matplotlib_missing() -> str | None:
    """The one-line error to print when matplotlib cannot be imported, else None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return MATPLOTLIB_MISSING
    return None


def plot_timeline(database: str, path: str, shown: str, out: TextIO) -> None:
    """Measure both curves (plain ``threading.Thread``, ``forksafe.Thread``) and save ``path``.

    Runs in the demo's process; the threads run in two child interpreters, one
    per mode, so that the plain one has not even imported forksafe.
    Raises ``RuntimeError`` when a measurement fails.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    from forksafe.demo import _scenarios

    runs: dict[str, dict[str, Any]] = {}
    for mode in ("plain", "forksafe"):
        out.write(f"  measuring sessions over time: {mode} threads ...\n")
        out.flush()
        runs[mode] = _scenarios.run("threads_timeline", database, mode=mode)

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    styles = {
        "plain": ("threading.Thread (plain Django)", "#d62728"),
        "forksafe": ("forksafe.Thread", "#2ca02c"),
    }
    for mode, res in runs.items():
        label, color = styles[mode]
        base = res["sessions_before"] or 0
        xs = [t for t, _ in res["extra"]["samples"]]
        ys = [n - base for _, n in res["extra"]["samples"]]
        ax.step(xs, ys, where="post", color=color, linewidth=2, label=label)
    started = runs["plain"]["extra"]["started"]
    joined = max(r["extra"]["joined"] for r in runs.values())
    ax.axvspan(started, joined, color="#999999", alpha=0.15, label="threads running")
    ax.axvline(joined, color="#555555", linestyle="--", linewidth=1)
    ax.annotate(
        "all threads joined",
        xy=(joined, 0),
        xytext=(joined + 0.05, 4),
        fontsize=9,
        color="#555555",
    )
    ax.set_title(f"Server sessions while 50 short threads query, and after join()\n{shown}")
    ax.set_xlabel("seconds (sampled every ~20 ms, no gc.collect())")
    ax.set_ylabel("open server sessions (client backends)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    for mode, res in runs.items():
        left = res["sessions_left"]
        peak = max(n for _, n in res["extra"]["samples"]) - (res["sessions_before"] or 0)
        out.write(f"  {styles[mode][0]}: peak {peak:.0f} sessions, {left} left after join()\n")
    out.write(f"wrote {path}\n")
