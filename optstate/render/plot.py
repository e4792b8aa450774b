"""Pictures of runs: ``simulate --plot``, ``compare --plot`` and ``timeline --plot``.

Each picture is one more rendering of the plain-data report a command already builds
(``optstate.simulate/1``, ``optstate.compare/1``, ``optstate.timeline/1``): nothing here
steps an optimizer or reads a checkpoint.

matplotlib is an optional extra (``pip install 'optstate[plot]'``) imported only when a
picture is asked for. We draw on a bare ``Figure`` with the Agg canvas and never touch
``pyplot``: no global backend switch, no display needed, nothing left open. The size in
pixels is fixed (``RUN_SIZE``, ``COMPARE_SIZE``, ``TIMELINE_SIZE``) and the file carries
no timestamp or version, so the same run gives the same bytes.

About 490 lines on purpose: the three pictures share the figure, format, saving and
scale helpers at the top; each picture is then one function of its report.

For 2-D objectives (exactly two parameter elements, Rosenbrock or quadratic) the
trajectory is drawn over the objective's contour plot; the objective is evaluated with
the gradient source's own torch expression (``sim/gradients.py``: ``objective_grid``,
``optimum``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optstate.base.errors import ConfigError
from optstate.io.torch_file import atomic_write, check_writable

DPI = 100
RUN_SIZE = (1200, 800)  # pixels, width x height
COMPARE_SIZE = (1400, 600)
GRID = 241  # contour grid points per axis

# Objectives worth a contour plot: a bowl or a valley with a known minimum. (The linear
# "constant" objective has no minimum; its contour lines are straight and say nothing.)
CONTOUR_OBJECTIVES = ("rosenbrock", "quadratic")

START_STYLE = {"marker": "o", "markersize": 9, "markerfacecolor": "white",
               "markeredgecolor": "black", "linestyle": "none", "zorder": 5}
OPTIMUM_STYLE = {"marker": "*", "markersize": 16, "color": "gold",
                 "markeredgecolor": "black", "linestyle": "none", "zorder": 4}
END_MARKERSIZE = 10
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
# Fields that would make two renderings of the same data differ.
_NO_STAMPS = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}


class PlotUnavailableError(ConfigError):
    """--plot was asked for but matplotlib is not installed."""


def require_matplotlib() -> Any:
    """Import matplotlib, or fail with the one line that says how to get it."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise PlotUnavailableError(
            "--plot needs matplotlib, which is not installed: pip install 'optstate[plot]'"
        ) from None
    return matplotlib


def picture_format(path: str | Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"cannot tell the picture format of {str(path)!r} from its extension",
            hint="name the file .png, .svg or .pdf",
        )
    return fmt


def check_plot_target(path: str | Path, force: bool) -> Path:
    """Everything that can go wrong with ``--plot PATH`` before any work is done."""
    picture_format(path)
    require_matplotlib()
    return check_writable(path, force)


def save_figure(fig: Any, path: str | Path, *, force: bool = False) -> Path:
    """Write ``fig`` atomically at the fixed DPI (no tight bbox: the size stays exact)."""
    fmt = picture_format(path)
    import matplotlib

    def write(f: Any) -> None:
        # an SVG's clip-path ids are random unless hashed with a fixed salt
        with matplotlib.rc_context({"svg.hashsalt": "optstate"}):
            fig.savefig(f, format=fmt, dpi=DPI, metadata=_NO_STAMPS[fmt])

    return atomic_write(path, write, force=force)


def new_figure(size: tuple[int, int]) -> Any:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def view_box(points: Sequence[Sequence[float]], anchors: Sequence[Sequence[float]]
             ) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) around the anchors (start, optimum) and the trajectory
    points, padded. Points far away (a run that diverged) are left off the view, so
    they do not squash everyone else's path to a dot."""
    ax = [a[0] for a in anchors]
    ay = [a[1] for a in anchors]
    cx, cy = sum(ax) / len(ax), sum(ay) / len(ay)
    reach = 10 * max(1.0, *(math.hypot(x - cx, y - cy) for x, y in zip(ax, ay, strict=True)))
    xs, ys = list(ax), list(ay)
    for x, y in points:
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        if math.hypot(x - cx, y - cy) <= reach:
            xs.append(x)
            ys.append(y)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    span = max(x1 - x0, y1 - y0, 1.0)
    pad = 0.12 * span
    # Square-ish data box centred on the content: contour plots read best unstretched.
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    hx = max(x1 - x0, 0.75 * span) / 2 + pad
    hy = max(y1 - y0, 0.75 * span) / 2 + pad
    return mx - hx, mx + hx, my - hy, my + hy


def draw_plane(ax: Any, grad: str, grad_value: float,
               box: tuple[float, float, float, float]) -> None:
    """The (x, y) plane of a 2-element parameter: the objective's contour plot where
    it has a minimum worth drawing, else a plain grid (``normal`` noise, ``constant``)."""
    if grad in CONTOUR_OBJECTIVES:
        draw_contour(ax, grad, grad_value, box)
    else:
        ax.grid(True, alpha=0.3)
    x0, x1, y0, y1 = box
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x (element 0)")
    ax.set_ylabel("y (element 1)")


def plane_title(what: str, grad: str) -> str:
    return f"{what} on {grad}" if grad in CONTOUR_OBJECTIVES else f"{what} ({grad} gradients)"


def draw_contour(ax: Any, grad: str, grad_value: float,
                 box: tuple[float, float, float, float]) -> None:
    import numpy as np
    from matplotlib.colors import LogNorm

    from optstate.sim.gradients import objective_grid

    x0, x1, y0, y1 = box
    xs = np.linspace(x0, x1, GRID)
    ys = np.linspace(y0, y1, GRID)
    z = objective_grid(grad, grad_value, xs, ys).numpy()
    finite = z[np.isfinite(z)]
    top = float(finite.max()) if finite.size else 1.0
    low = max(float(finite.min()) if finite.size else 0.0, top * 1e-7, 1e-6)
    if top > low:
        levels = np.geomspace(low, top, 16)
        z = np.clip(z, low, top)
        ax.contourf(xs, ys, z, levels=levels, norm=LogNorm(low, top), cmap="Greys_r",
                    alpha=0.45, zorder=1)
        ax.contour(xs, ys, z, levels=levels, colors="0.45", linewidths=0.6, zorder=2)


def draw_trajectory(ax: Any, points: Sequence[Sequence[float | None]], color: str,
                    label: str | None = None) -> None:
    """The path as a line, the end point as a filled marker in the path's colour."""
    xs = [math.nan if p[0] is None else p[0] for p in points]
    ys = [math.nan if p[1] is None else p[1] for p in points]
    ax.plot(xs, ys, color=color, linewidth=1.6, label=label, zorder=3)
    end = last_finite_point(points)
    if end is not None:
        ax.plot([end[0]], [end[1]], marker="o", markersize=END_MARKERSIZE, color=color,
                markeredgecolor="black", markeredgewidth=0.8, linestyle="none", zorder=6)


def last_finite_point(points: Sequence[Sequence[float | None]]) -> tuple[float, float] | None:
    for x, y in reversed(points):
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
            return (x, y)
    return None


def _series(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def draw_loss(ax: Any, steps: Sequence[int], loss: Sequence[float | None], color: str,
              label: str | None = None) -> None:
    ax.plot(steps, _series(loss), color=color, linewidth=1.4, label=label)


def use_log_scale(ax: Any, series: Sequence[Sequence[float | None]]) -> None:
    """Log y when every finite value is positive and they span more than a decade."""
    vals = [v for s in series for v in s if v is not None and math.isfinite(v)]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 10:
        ax.set_yscale("log")


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


# --------------------------------------------------------------------------- pictures


def run_title(report: dict[str, Any]) -> str:
    cfg = report["config"]
    hyper = ", ".join(f"{k} {_short(v)}" for k, v in cfg["hyperparams"].items())
    parts = [report["optimizer"] + (f" ({hyper})" if hyper else ""), f"grad {cfg['grad']}",
             f"steps {report['start_step']}–{report['final_step']}", f"seed {cfg['seed']}"]
    return " · ".join(parts)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ",".join(_short(x) for x in v)
    return str(v)


def run_figure(report: dict[str, Any]) -> Any:
    """The picture of one ``simulate`` report: loss, learning rate and parameter norm
    over steps; with a 2-D objective, the trajectory over its contour plot too."""
    h = report["history"]
    cfg = report["config"]
    points = h.get("point") or []
    fig = new_figure(RUN_SIZE)
    two_d = bool(points)
    if two_d:
        grid = fig.add_gridspec(3, 2, width_ratios=(1.15, 1))
        ax_path = fig.add_subplot(grid[:, 0])
        axes = [fig.add_subplot(grid[i, 1]) for i in range(3)]
    else:
        grid = fig.add_gridspec(3, 1)
        axes = [fig.add_subplot(grid[i, 0]) for i in range(3)]
    ax_loss, ax_lr, ax_norm = axes
    fig.suptitle(run_title(report))
    steps = h["step"]

    if any(v is not None for v in h["loss"]):
        draw_loss(ax_loss, steps, h["loss"], "C0")
        use_log_scale(ax_loss, [h["loss"]])
    else:
        _no_data(ax_loss, f"no objective (grad {cfg['grad']})")
    ax_loss.set_ylabel("loss")

    n_groups = len(h["lr"][0]) if h["lr"] else 0
    for g in range(n_groups):
        ax_lr.plot(steps, [row[g] for row in h["lr"]], color=f"C{g % 10}",
                   label=f"group {g}" if n_groups > 1 else None)
    if n_groups > 1:
        ax_lr.legend(loc="best", fontsize="small")
    use_log_scale(ax_lr, [[row[g] for row in h["lr"]] for g in range(n_groups)])  # decays
    ax_lr.set_ylabel("learning rate")

    ax_norm.plot(steps, _series(h["param_norm"]), color="C2")
    ax_norm.set_ylabel("parameter norm")
    ax_norm.set_xlabel("step")
    for ax in axes:
        ax.grid(True, alpha=0.3)

    if two_d:
        from optstate.sim.gradients import optimum

        opt = optimum(cfg["grad"], cfg["grad_value"], 2)
        start = points[0]
        box = view_box(points, [start, *([opt] if opt else [])])
        draw_plane(ax_path, cfg["grad"], cfg["grad_value"], box)
        if opt:
            ax_path.plot([opt[0]], [opt[1]], **OPTIMUM_STYLE, label="optimum")
        ax_path.plot([start[0]], [start[1]], **START_STYLE, label="start")
        draw_trajectory(ax_path, points, "C3", label="trajectory")
        ax_path.legend(loc="upper left", fontsize="small")
        ax_path.set_title(plane_title("trajectory", cfg["grad"]))
    return fig


def compare_figure(report: dict[str, Any]) -> Any:
    """The picture of a ``compare`` report: every trajectory on one contour plot (2-D
    objectives) and every loss curve on a second panel."""
    runs = report["runs"]
    obj = report["objective"]
    fig = new_figure(COMPARE_SIZE)
    two_d = all(r["history"].get("point") for r in runs)
    if two_d:
        ax_path, ax_loss = fig.subplots(1, 2, width_ratios=(1, 1.1))
    else:
        ax_path, ax_loss = None, fig.add_subplot(1, 1, 1)
    fig.suptitle(f"{', '.join(r['label'] for r in runs)} on {obj['grad']} · "
                 f"{report['steps']} steps · seed {report['seed']}")
    colors = {r["label"]: run_color(i) for i, r in enumerate(runs)}

    # The loss over steps; with no objective (normal noise, none), the parameter norm.
    series = "loss"
    if not any(v is not None for r in runs for v in r["history"]["loss"]):
        series = "param_norm"
    values = [r["history"][series] for r in runs]
    for r, ys in zip(runs, values, strict=True):
        draw_loss(ax_loss, r["history"]["step"], ys, colors[r["label"]],
                  label=r["label"] + (" (diverged)" if r["diverged"] else ""))
    use_log_scale(ax_loss, values)
    ax_loss.legend(loc="best", fontsize="small")
    name = "loss" if series == "loss" else "parameter norm"
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(name)
    ax_loss.grid(True, alpha=0.3)
    ax_loss.set_title(name if series == "loss" else f"{name} (grad {obj['grad']}: no loss)")

    if ax_path is not None:
        start = obj["start"]
        opt = obj["optimum"]
        every = [p for r in runs for p in r["history"]["point"]]
        box = view_box(every, [start, *([opt] if opt else [])])
        draw_plane(ax_path, obj["grad"], obj["grad_value"], box)
        if opt:
            ax_path.plot([opt[0]], [opt[1]], **OPTIMUM_STYLE)
        ax_path.plot([start[0]], [start[1]], **START_STYLE)
        for r in runs:
            draw_trajectory(ax_path, r["history"]["point"], colors[r["label"]], r["label"])
        ax_path.legend(loc="upper left", fontsize="small")
        ax_path.set_title(plane_title("trajectories", obj["grad"]))
    return fig


def run_color(i: int) -> str:
    """Run i's colour: matplotlib's tab10 cycle without its grey (C7), which the contour
    map uses."""
    return f"C{_PALETTE[i % len(_PALETTE)]}"


_PALETTE = (0, 1, 2, 3, 4, 5, 6, 8, 9)


def write_run_plot(report: dict[str, Any], path: str | Path, *, force: bool = False) -> Path:
    return save_figure(run_figure(report), path, force=force)


def write_compare_plot(report: dict[str, Any], path: str | Path, *, force: bool = False
                       ) -> Path:
    return save_figure(compare_figure(report), path, force=force)


# --------------------------------------------------------------------------- timeline

TIMELINE_SIZE = (1200, 800)
TIMELINE_CURVES = 8  # entries drawn at most: those with findings first, then the largest
_FINDING_COLOR = "C3"


def _report_number(value: Any) -> float:
    """A timeline report's number as a float for drawing: NaN (no point) for null and
    for the "nan"/"inf" strings, which no axis can place."""
    from optstate.analysis.timeline_record import num

    v = num(value)
    return math.nan if v is None or not math.isfinite(v) else v


_NONFINITE_STYLE = {"marker": "x", "markersize": 9, "markeredgewidth": 2,
                    "color": _FINDING_COLOR, "linestyle": "none", "zorder": 6}


def _lr_scale(ax: Any, values: list[float]) -> None:
    """Log y when the positive lrs span more than a decade; symmetric log when some lr is
    0 too (a schedule's end), so that the 0 stays on the picture, at the bottom."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    if not positive or max(positive) / min(positive) <= 10:
        return
    if any(v == 0 for v in values):
        ax.set_yscale("symlog", linthresh=min(positive))
    else:
        ax.set_yscale("log")


def timeline_x(report: dict[str, Any]) -> tuple[list[float], str]:
    """Each checkpoint's place on the x axis: the step the run is ordered by when every
    checkpoint has one, else its position in the order."""
    steps = [c.get("step") for c in report["checkpoints"]]
    if steps and all(isinstance(s, (int, float)) for s in steps):
        return [float(s) for s in steps], f"step ({report['order']['by']})"
    return [float(i) for i in range(len(steps))], "checkpoint (in order)"


def timeline_curves(report: dict[str, Any], most: int = TIMELINE_CURVES
                    ) -> list[dict[str, Any]]:
    """The series to draw: those a finding names (first finding first), then the others
    by their largest finite norm; at most ``most``."""
    def key(s: dict[str, Any]) -> tuple[Any, Any]:
        return (s["param"], s["entry"])

    by_key = {key(s): s for s in report["series"]}
    chosen: list[dict[str, Any]] = []
    for f in report["findings"]:
        s = by_key.get((f.get("param"), f.get("entry")))
        if s is not None and s not in chosen:
            chosen.append(s)

    def largest(s: dict[str, Any]) -> float:
        vals = [v for v in map(_report_number, s["norm"]) if math.isfinite(v)]
        return max(vals, default=-1.0)

    rest = sorted((s for s in report["series"] if s not in chosen), key=largest,
                  reverse=True)
    return (chosen + rest)[:most]


def _series_label(s: dict[str, Any]) -> str:
    who = s["name"] if s.get("name") else f"state[{s['param']}]"
    return f"{who}.{s['entry']}"


def timeline_figure(report: dict[str, Any]) -> Any:
    """The picture of a ``timeline`` report: the norm of the top entries over the run (log
    scale; a red x where an entry holds NaN or Inf), the lr of every group below it (the
    scheduler's own lr dashed), and a vertical line with the codes at every checkpoint
    with a finding."""
    fig = new_figure(TIMELINE_SIZE)
    grid = fig.add_gridspec(2, 1, height_ratios=(2, 1))
    ax_norm = fig.add_subplot(grid[0, 0])
    ax_lr = fig.add_subplot(grid[1, 0], sharex=ax_norm)
    xs, xlabel = timeline_x(report)
    n = len(report["checkpoints"])
    k = len(report["findings"])
    from optstate.render.timeline_view import run_paths

    paths = run_paths(report["run"]["paths"])
    fig.suptitle(f"{paths} · {n} checkpoint{'s' * (n != 1)} · "
                 f"{k} finding{'s' * (k != 1)}" if k else
                 f"{paths} · {n} checkpoint{'s' * (n != 1)} · no finding")

    curves = timeline_curves(report)
    drawn: list[list[float]] = []
    marked = False
    for i, s in enumerate(curves):
        ys = [v if v > 0 else math.nan for v in map(_report_number, s["norm"])]
        drawn.append(ys)
        color = run_color(i)
        ax_norm.plot(xs, ys, color=color, linewidth=1.4, marker="o", markersize=3,
                     label=_series_label(s))
        bad = [j for j in range(n) if (s["nan"][j] or 0) or (s["inf"][j] or 0)]
        on_curve = [j for j in bad if math.isfinite(ys[j])]
        off_curve = [j for j in bad if not math.isfinite(ys[j])]
        if on_curve:
            ax_norm.plot([xs[j] for j in on_curve], [ys[j] for j in on_curve],
                         **_NONFINITE_STYLE)
        if off_curve:  # no finite element, so no norm: at the top edge
            ax_norm.plot([xs[j] for j in off_curve], [0.97] * len(off_curve),
                         transform=ax_norm.get_xaxis_transform(), clip_on=False,
                         **_NONFINITE_STYLE)
        marked = marked or bool(bad)
    if marked:  # one legend entry for every x
        ax_norm.plot([], [], label="holds NaN/Inf (top edge: no finite element)",
                     **_NONFINITE_STYLE)
    if any(math.isfinite(v) for ys in drawn for v in ys):
        ax_norm.set_yscale("log")
    else:
        _no_data(ax_norm, "no finite norm to draw")
    if curves:  # beside the axes: inside, it would cover the findings' codes and lines
        ax_norm.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax_norm.set_ylabel("norm (finite elements)")
    shown = len(curves)
    total = len(report["series"])
    ax_norm.set_title(f"state entries: {shown} of {total}" + (
        " (those with findings first, then the largest)" if total > shown else ""),
        fontsize="medium")

    lines = report["lr"]
    for g, row in enumerate(lines):
        color = f"C{g % 10}"
        label = f"group {row['group']}" if len(lines) > 1 else "lr"
        ax_lr.plot(xs, [_report_number(v) for v in row["lr"]], color=color, linewidth=1.4,
                   marker="o", markersize=3, label=label)
        scheduled = row.get("scheduled_lr") or []
        if any(isinstance(v, (int, float)) for v in scheduled):
            ax_lr.plot(xs, [_report_number(v) for v in scheduled], color=color,
                       linestyle="--", linewidth=1.2, label=f"{label}: its scheduler's")
    if lines:
        _lr_scale(ax_lr, [_report_number(v) for row in lines
                          for v in [*row["lr"], *(row.get("scheduled_lr") or [])]])
        ax_lr.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    else:
        _no_data(ax_lr, "no lr recorded")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel(xlabel)

    codes: dict[int, list[str]] = {}
    for f in report["findings"]:
        i = f.get("checkpoint")
        if isinstance(i, int) and 0 <= i < n and f["code"] not in codes.setdefault(i, []):
            codes[i].append(f["code"])
    for i, found in sorted(codes.items()):
        for ax in (ax_norm, ax_lr):
            ax.axvline(xs[i], color=_FINDING_COLOR, alpha=0.45, linewidth=1.2, zorder=1)
        ax_norm.text(xs[i], 0.02, " " + ", ".join(found), rotation=90, fontsize="small",
                     color=_FINDING_COLOR, ha="right", va="bottom",
                     transform=ax_norm.get_xaxis_transform())
    for ax in (ax_norm, ax_lr):
        ax.grid(True, alpha=0.3)
    return fig


def write_timeline_plot(report: dict[str, Any], path: str | Path, *, force: bool = False
                        ) -> Path:
    return save_figure(timeline_figure(report), path, force=force)
