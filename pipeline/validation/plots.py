"""The report's plots: fidelity against size, speed against fidelity, tokens/s; coloured by where each cell ran.

Every point is coloured by its lane (:func:`lane`): on the device itself, the NPU pipeline on CPU (NPUW), a CPU
stand-in for an absent device, or a numerics-emulation cell. A failed cell is drawn as a cross. Labels sit in a
column beside the axes, in the order of their points, joined to them by a thin line, so no two labels overlap
however close the points are (tiny models put int4, NPU int4 and the ONNX graphs within a few MB of each other).
A mean KL of 0 (fp16 on CPU) is drawn at 0 on a symmetric-log axis, not at an invented floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.validation.report import Row
from pipeline.validation.summary import EMULATION_MARK, placement

LANES = {  # lane -> colour (matplotlib's colour-blind-safe tableau set)
    "on the device": "tab:blue",
    "NPU pipeline on CPU (NPUW)": "tab:purple",
    "CPU stand-in": "tab:orange",
    "numerics emulation": "tab:gray",
}
KL_LINEAR_BELOW = 1e-6  # symlog: linear between 0 and this, log above


def lane(row: Row) -> str:
    """Which of :data:`LANES` a cell ran in."""
    if EMULATION_MARK in row.cell:
        return "numerics emulation"
    where = placement(row)
    if where.real:
        return "on the device"
    return "NPU pipeline on CPU (NPUW)" if "NPUW" in where.where else "CPU stand-in"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label_column(ax: Any, points: list[tuple[float, float, str]]) -> None:
    """Labels in a column right of ``ax``, ordered as their points' heights, each joined to its point."""
    order = sorted(points, key=lambda p: p[1], reverse=True)
    step = 1.0 / max(len(order), 1)
    for i, (x, y, text) in enumerate(order):
        ax.annotate(
            text,
            xy=(x, y),
            xycoords="data",
            xytext=(1.04, 1 - (i + 0.5) * step),
            textcoords="axes fraction",
            fontsize=6,
            va="center",
            arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.5},
        )


def _scatter(ax: Any, rows: list[Row], x: Any, y: Any) -> list[tuple[float, float, str]]:
    """Points of ``rows`` at (x(row), y(row)), coloured by lane; the label of each."""
    points = []
    for row in rows:
        px, py = x(row), y(row)
        if px is None or py is None:
            continue
        ax.scatter(px, py, color=LANES[lane(row)], marker="x" if row.status == "failed" else "o", s=28)
        points.append((float(px), float(py), f"{row.artifact} @ {row.cell}"))
    return points


def _legend(fig: Any, rows: list[Row]) -> None:
    plt = _pyplot()
    used = {lane(r) for r in rows}
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=name) for name, c in LANES.items() if name in used]
    handles.append(plt.Line2D([], [], marker="x", ls="", color="black", label="failed cell"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)


def plot_size_vs_fidelity(rows: list[Row], path: Path) -> list[Any]:
    """Size on disk against mean KL and top-1 agreement, one point per cell that ran; returns the label boxes."""
    plt = _pyplot()
    ran = [r for r in rows if r.ran]
    fig, (kl_ax, top1_ax) = plt.subplots(2, 1, figsize=(9, 8), dpi=110)
    kl_points = _scatter(kl_ax, ran, lambda r: r.size_mb, lambda r: r.data.get("mean_kl"))
    top1_points = _scatter(top1_ax, ran, lambda r: r.size_mb, lambda r: r.data.get("top1_agreement"))
    kl_ax.set_yscale("symlog", linthresh=KL_LINEAR_BELOW)
    kl_ax.set_ylabel(f"mean KL vs PyTorch (nats; linear below {KL_LINEAR_BELOW:g})")
    top1_ax.set_ylabel("teacher-forced top-1 agreement")
    for ax, points in ((kl_ax, kl_points), (top1_ax, top1_points)):
        ax.set_xlabel("size on disk (MB)")
        _label_column(ax, points)
    return _finish(fig, ran, "Size vs fidelity (f32 runtime)", path)


def plot_speed_vs_fidelity(rows: list[Row], path: Path) -> list[Any]:
    """Decode tokens/s against top-1 agreement, for the cells that measured speed; returns the label boxes."""
    plt = _pyplot()
    ran = [r for r in rows if r.ran and r.data.get("tokens_per_s")]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    points = _scatter(ax, ran, lambda r: r.data.get("tokens_per_s"), lambda r: r.data.get("top1_agreement"))
    ax.set_xscale("log")
    ax.set_xlabel("tokens/s (decode, median of repeats; log)")
    ax.set_ylabel("teacher-forced top-1 agreement")
    _label_column(ax, points)
    return _finish(fig, ran, "Speed vs fidelity (up and right is better)", path)


def plot_tokens_per_s(rows: list[Row], path: Path) -> list[Any]:
    """Decode tokens/s of every cell that measured speed, one bar per prompt length; returns the label boxes."""
    plt = _pyplot()
    ran = [r for r in rows if r.ran and r.data.get("perf")]  # emulation cells only measure fidelity
    prompts = list(ran[0].data["perf"]) if ran else []
    fig, ax = plt.subplots(figsize=(9, 0.4 * max(len(ran), 1) + 1.6), dpi=110)
    height = 0.8 / max(len(prompts), 1)
    for i, name in enumerate(prompts):
        values = [r.data["perf"].get(name, {}).get("tokens_per_s") or 0 for r in ran]
        ax.barh(
            [y + i * height for y in range(len(ran))],
            values,
            height=height,
            color=[LANES[lane(r)] for r in ran],
            alpha=1.0 - 0.45 * i,
        )
    ax.set_yticks([y + height * (len(prompts) - 1) / 2 for y in range(len(ran))])
    ax.set_yticklabels([f"{r.artifact} @ {r.cell}" for r in ran], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    lengths = ", ".join(f"{ran[0].data['perf'][name]['prompt_tokens']}" for name in prompts)
    ax.set_xlabel(f"tokens/s (decode, median of repeats; log); prompts of {lengths} tokens, longer ones lighter")
    return _finish(fig, ran, "Decode speed", path, [*ax.get_yticklabels()])


def _finish(fig: Any, rows: list[Row], title: str, path: Path, labels: list[Any] | None = None) -> list[Any]:
    """Title, lane legend, a layout that keeps the label column inside the figure; save; the labels' boxes (pixels)."""
    fig.suptitle(title)
    _legend(fig, rows)
    fig.tight_layout(rect=(0, 0.05, 0.72 if labels is None else 1, 0.97))
    fig.savefig(path)
    drawn = labels if labels is not None else [t for ax in fig.axes for t in ax.texts]
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t, renderer) for t in drawn]  # the text alone (an annotation's adds its line)
    _pyplot().close(fig)
    return boxes
