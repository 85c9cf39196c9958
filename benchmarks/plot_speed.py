"""Plot the epoch times and the ratios to the PyTorch peer from reports of ``speed.py``.

Reads the "Seconds per epoch" table of one or more Markdown reports written by
``benchmarks/speed.py`` (one per thread count) and draws, side by side: seconds per
epoch against S for every contender, and the ratio numba float32 / peer against S for
each peer in the report (PyTorch; JAX where it ran), with each peer's targets.

    python benchmarks/plot_speed.py benchmarks/results/speed_2threads.md \\
        benchmarks/results/speed_1thread.md --out benchmarks/results/speed.png
"""

import argparse
import re
import sys

from speed import JAX_PEER, PEER, TARGETS  # the targets, by peer and S

TABLE = "## Seconds per epoch"
#: Ratio columns of the table, by the peer they divide by.
RATIOS = {"numba-float32 / peer": PEER, f"numba-float32 / {JAX_PEER}": JAX_PEER}
LABELS = {PEER: "PyTorch peer", JAX_PEER: "JAX peer"}


def read_report(path):
    """``(threads, {contender: {S: seconds}}, {peer: {S: ratio}})`` from one report."""
    with open(path) as f:
        text = f.read()
    m = re.search(r"Threads: (\d+)", text)
    if m is None or TABLE not in text:
        raise ValueError(f"{path}: not a report of benchmarks/speed.py (no 'Threads:' line or no '{TABLE}' table)")
    threads = int(m.group(1))
    rows = []
    for line in text.split(TABLE, 1)[1].splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:                      # the table ended
            break
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    times, ratio = {}, {}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        S = int(cells[0])
        for name, cell in zip(header[1:], cells[1:]):
            number = re.match(r"[0-9.]+", cell)
            if number is None:
                continue
            if name in RATIOS:
                ratio.setdefault(RATIOS[name], {})[S] = float(number.group())
            elif "/" not in name:
                times.setdefault(name, {})[S] = float(number.group())
    return threads, times, ratio


def plot(reports, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = ["-", "--", ":", "-."]
    colors = {}
    for k, (threads, times, ratio) in enumerate(sorted(reports, reverse=True)):
        ls = styles[k % len(styles)]
        for name, by_s in times.items():
            color = colors.setdefault(name, f"C{len(colors)}")
            s = sorted(by_s)
            ax_t.plot(s, [by_s[v] for v in s], ls, marker="o", color=color,
                      label=f"{name}, {threads} thread{'s' if threads > 1 else ''}")
        for peer, by_s in ratio.items():
            s = sorted(by_s)
            ax_r.plot(s, [by_s[v] for v in s], ls, marker="o", color=colors.setdefault(peer, f"C{len(colors)}"),
                      label=f"/ {LABELS.get(peer, peer)}, {threads} thread{'s' if threads > 1 else ''}")
    ax_t.set(xscale="log", yscale="log", xlabel="Monte Carlo samples S", ylabel="seconds per epoch (median)",
             title="Training time per epoch")
    ax_t.legend(fontsize=7)
    all_s = sorted({S for _, _, ratio in reports for by_s in ratio.values() for S in by_s})
    for peer in sorted({peer for _, _, ratio in reports for peer in ratio}):
        if peer in TARGETS and all_s:
            ax_r.step(all_s, [TARGETS[peer](S) for S in all_s], where="mid", color=colors[peer], lw=0.8, ls="--",
                      label=f"target against the {LABELS.get(peer, peer)}")
    ax_r.axhline(1.0, color="0.6", lw=0.8)
    ax_r.set(xscale="log", xlabel="Monte Carlo samples S", ylabel="numba float32 / peer",
             title="Ratio to each peer (lower is faster)", ylim=(0, max(1.3, ax_r.get_ylim()[1])))
    ax_r.legend(fontsize=8)
    ticks = sorted({S for _, times, _ in reports for by_s in times.values() for S in by_s})
    from matplotlib.ticker import LogLocator, NullFormatter, NullLocator, ScalarFormatter
    ax_t.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_t.yaxis.set_major_formatter(ScalarFormatter())
    ax_t.yaxis.set_minor_formatter(NullFormatter())
    for ax in (ax_t, ax_r):
        ax.grid(alpha=0.3, which="both")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("reports", nargs="+", help="Markdown reports of benchmarks/speed.py")
    p.add_argument("--out", default="speed.png", help="the figure")
    args = p.parse_args(argv)
    try:
        reports = [read_report(path) for path in args.reports]
    except (OSError, ValueError) as exc:
        print(f"plot_speed.py: {exc}", file=sys.stderr)
        return 2
    plot(reports, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
