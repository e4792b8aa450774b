"""Pictures: rendered for real (Agg), read back as pixels, checked against the data."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("matplotlib")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.image import imread  # noqa: E402

from optstate.base.errors import ConfigError  # noqa: E402
from optstate.render.plot import (
    COMPARE_SIZE,
    OPTIMUM_STYLE,
    RUN_SIZE,
    TIMELINE_CURVES,
    TIMELINE_SIZE,
    PlotUnavailableError,
    compare_figure,
    require_matplotlib,
    run_color,
    run_figure,
    save_figure,
    timeline_curves,
    timeline_figure,
    view_box,
)
from optstate.sim.config import GroupSpec, RunSpec, SchedulerSpec  # noqa: E402
from optstate.sim.gradients import make_source, objective_grid  # noqa: E402
from optstate.sim.report import simulate_report  # noqa: E402
from optstate.sim.simulate import simulate  # noqa: E402

POINT = (GroupSpec(shapes=((2,),)),)


def pixels(path):
    """The PNG as an (H, W, 3) float array in [0, 1]."""
    return imread(str(path))[:, :, :3]


def pixel_at(img, ax, x, y):
    """The colour of the pixel under data point (x, y) of ``ax`` (after the figure was
    saved, so the layout is final): display coords have their origin bottom left."""
    dx, dy = ax.transData.transform((x, y))
    return img[int(img.shape[0] - dy), int(dx)]


def assert_colour(actual, expected, tol=2 / 255):
    assert np.abs(np.asarray(actual) - np.asarray(to_rgb(expected))).max() <= tol, (
        actual, to_rgb(expected))


def assert_disc(img, ax, x, y, colour):
    """A filled disc of ``colour`` centred on data point (x, y): the centre pixel and
    the pixels 4 px away in all eight directions have the colour. (A line of the same
    colour through (x, y) would colour at most the two samples along it.)"""
    dx, dy = ax.transData.transform((x, y))
    row, col = int(img.shape[0] - dy), int(dx)
    for dr in (-4, 0, 4):
        for dc in (-4, 0, 4):
            r, c = (row + dr, col + dc) if 0 in (dr, dc) else (row + dr * 3 // 4,
                                                                  col + dc * 3 // 4)
            assert_colour(img[r, c], colour)


@pytest.fixture(scope="module")
def rosen_report():
    spec = RunSpec(optimizer="Adam", hyperparams={"lr": 0.05}, grad="rosenbrock",
                   groups=POINT, steps=12)
    result = simulate(spec)
    return result, simulate_report(result)


@pytest.fixture(scope="module")
def rosen_png(rosen_report, tmp_path_factory):
    _, report = rosen_report
    fig = run_figure(report)
    path = save_figure(fig, tmp_path_factory.mktemp("plot") / "run.png")
    return fig, path


def test_run_picture_has_fixed_size_and_is_not_blank(rosen_png):
    _, path = rosen_png
    img = pixels(path)
    assert img.shape[:2] == (RUN_SIZE[1], RUN_SIZE[0])
    white = np.all(img > 0.99, axis=2).mean()
    assert 0.2 < white < 0.95  # a picture, not a blank page nor a black one
    rgb = (img * 255).round().astype(np.uint32)
    assert len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])) > 50


def test_run_trajectory_ends_where_the_parameters_are(rosen_report, rosen_png):
    result, report = rosen_report
    fig, path = rosen_png
    img = pixels(path)
    ax_path = fig.axes[0]
    x, y = result.params[0].detach().tolist()  # the data: where Adam left the point
    assert report["history"]["point"][-1] == [x, y]
    assert_disc(img, ax_path, x, y, "C3")  # the end marker, drawn on top
    sx, sy = report["history"]["point"][0]
    assert_colour(pixel_at(img, ax_path, sx, sy), "white")  # the start marker
    assert_colour(pixel_at(img, ax_path, 1.0, 1.0), OPTIMUM_STYLE["color"])  # the optimum
    # The step before ended 10+ px away: no disc there, only the line passing through.
    px, py = report["history"]["point"][-2]
    far = np.hypot(*(ax_path.transData.transform((x, y)) - ax_path.transData.transform((px, py))))
    assert far > 10
    with pytest.raises(AssertionError):
        assert_disc(img, ax_path, px, py, "C3")


def test_run_picture_is_deterministic(rosen_report, rosen_png, tmp_path):
    _, report = rosen_report
    again = save_figure(run_figure(report), tmp_path / "again.png")
    assert again.read_bytes() == rosen_png[1].read_bytes()


def test_picture_without_2d_objective_has_three_panels_of_the_same_size(tmp_path):
    spec = RunSpec(optimizer="SGD", hyperparams={"lr": 0.1}, grad="quadratic", steps=5,
                   groups=(GroupSpec(shapes=((2, 2),)), GroupSpec(shapes=((3,),),
                                                                  hyperparams={"lr": 0.01})))
    report = simulate_report(simulate(spec))
    assert report["history"]["point"] == []
    fig = run_figure(report)
    assert len(fig.axes) == 3
    lr_lines = fig.axes[1].get_lines()
    assert [list(line.get_ydata()) for line in lr_lines] == [[0.1] * 6, [0.01] * 6]
    path = save_figure(fig, tmp_path / "q.png")
    assert pixels(path).shape[:2] == (RUN_SIZE[1], RUN_SIZE[0])


def test_surface_is_the_gradient_sources_own_objective():
    xs, ys = [-1.5, 0.0, 1.0, 2.0], [-0.5, 1.0, 3.0]
    for grad, value in (("rosenbrock", 1.0), ("quadratic", 0.5), ("quadratic", -2.0)):
        z = objective_grid(grad, value, xs, ys)
        source = make_source(grad, value)
        for j, y in enumerate(ys):
            for i, x in enumerate(xs):
                expected = source.loss([torch.tensor([x, y], dtype=torch.float64)])
                assert z[j, i] == expected, (grad, x, y)


def test_view_box_leaves_a_diverged_run_off_the_picture():
    start, opt = (1.5, -0.3), (1.0, 1.0)
    box = view_box([(1.4, 0.0), (1e12, -1e12), (float("nan"), 0.0)], [start, opt])
    x0, x1, y0, y1 = box
    assert x0 < 1.0 < 1.5 < x1 and y0 < -0.3 < 1.0 < y1
    assert x1 - x0 < 10 and y1 - y0 < 10


def _compare_report(cli, *args):
    r = cli("compare", *args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_compare_picture_each_trajectory_ends_at_its_runs_final_params(cli, tmp_path):
    report = _compare_report(cli, "-O", "sgd,adam", "--set", "sgd.lr=0.0005",
                             "--set", "adam.lr=0.05", "--steps", "30")
    fig = compare_figure(report)
    path = save_figure(fig, tmp_path / "cmp.png")
    img = pixels(path)
    assert img.shape[:2] == (COMPARE_SIZE[1], COMPARE_SIZE[0])
    ax_path, ax_loss = fig.axes[0], fig.axes[1]
    ends = [r["final_params"] for r in report["runs"]]
    assert ends[0] != ends[1]
    for i, (x, y) in enumerate(ends):
        assert_disc(img, ax_path, x, y, run_color(i))
    # The loss panel draws exactly the reported losses.
    for line, run in zip(ax_loss.get_lines(), report["runs"], strict=True):
        assert list(line.get_ydata()) == run["history"]["loss"]


def test_cli_simulate_plot_writes_the_picture(cli, tmp_path):
    out = tmp_path / "run.png"
    r = cli("simulate", "-O", "adam", "--lr", "0.05", "--grad", "rosenbrock", "--shape", "2",
            "--steps", "10", "--plot", out, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["plot"] == str(out)
    assert pixels(out).shape[:2] == (RUN_SIZE[1], RUN_SIZE[0])
    assert len(report["history"]["point"]) == 11


def test_cli_plot_refuses_to_overwrite_before_stepping(cli, tmp_path):
    out = tmp_path / "run.png"
    out.write_bytes(b"keep me")
    save = tmp_path / "state.pkl"
    r = cli("simulate", "--steps", "3", "--save", save, "--plot", out)
    assert r.exit_code == 2
    assert r.stderr == f"Error: {out} already exists\nHint: pass --force to overwrite it\n"
    assert out.read_bytes() == b"keep me" and not save.exists()
    r = cli("simulate", "--steps", "3", "--plot", out, "--force")
    assert r.exit_code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_unknown_extension(cli, tmp_path):
    r = cli("compare", "-O", "sgd", "--steps", "2", "--plot", tmp_path / "cmp.bmp")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"Error: cannot tell the picture format of {str(tmp_path / 'cmp.bmp')!r} from its "
        "extension", "Hint: name the file .png, .svg or .pdf"]


def test_missing_matplotlib_is_one_line_saying_how_to_install(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(PlotUnavailableError):
        require_matplotlib()
    assert issubclass(PlotUnavailableError, ConfigError)
    for args in (("simulate", "--steps", "2"), ("compare", "-O", "sgd", "--steps", "2")):
        r = cli(*args, "--plot", tmp_path / "x.png")
        assert r.exit_code == 2
        assert r.stderr == ("Error: --plot needs matplotlib, which is not installed: "
                            "pip install 'optstate[plot]'\n")
        assert r.stdout == ""
    assert not (tmp_path / "x.png").exists()


def test_quadratic_trajectory_and_optimum(tmp_path):
    spec = RunSpec(optimizer="SGD", hyperparams={"lr": 0.2}, grad="quadratic",
                   grad_value=0.5, groups=POINT, steps=4)
    result = simulate(spec)
    report = simulate_report(result)
    fig = run_figure(report)
    img = pixels(save_figure(fig, tmp_path / "q.png"))
    x, y = result.params[0].detach().tolist()
    assert_disc(img, fig.axes[0], x, y, "C3")
    assert_colour(pixel_at(img, fig.axes[0], 0.5, 0.5), OPTIMUM_STYLE["color"])


def test_svg_output_has_no_date(rosen_report, tmp_path):
    _, report = rosen_report
    out = save_figure(run_figure(report), tmp_path / "run.svg")
    text = out.read_text()
    assert text.startswith("<?xml") and "<dc:date>" not in text
    assert 'width="864pt" height="576pt"' in text  # 1200x800 px at 100 dpi = 12x8 in


def test_svg_is_byte_for_byte_the_same_for_the_same_run(rosen_report, tmp_path):
    # matplotlib names an SVG's clip paths with random ids unless svg.hashsalt is fixed
    _, report = rosen_report
    a = save_figure(run_figure(report), tmp_path / "a.svg").read_bytes()
    b = save_figure(run_figure(report), tmp_path / "b.svg").read_bytes()
    assert a == b


def test_compare_without_objective_draws_paths_and_parameter_norms(cli, tmp_path):
    report = _compare_report(cli, "-O", "sgd,adam", "--grad", "normal", "--set", "lr=0.1",
                             "--steps", "6")
    fig = compare_figure(report)
    img = pixels(save_figure(fig, tmp_path / "n.png"))
    ax_path, ax_norm = fig.axes[0], fig.axes[1]
    assert ax_norm.get_ylabel() == "parameter norm"
    for line, run in zip(ax_norm.get_lines(), report["runs"], strict=True):
        assert list(line.get_ydata()) == run["history"]["param_norm"]
    for i, run in enumerate(report["runs"]):
        assert_disc(img, ax_path, *run["final_params"], run_color(i))


def test_lr_panel_goes_log_when_a_scheduler_decays_by_decades():
    spec = RunSpec(optimizer="SGD", hyperparams={"lr": 1.0}, grad="quadratic", steps=6,
                   scheduler=SchedulerSpec("StepLR", {"step_size": 2, "gamma": 0.1}))
    report = simulate_report(simulate(spec))
    fig = run_figure(report)
    ax_lr = fig.axes[1]
    assert ax_lr.get_yscale() == "log"
    assert list(ax_lr.get_lines()[0].get_ydata()) == [row[0] for row in report["history"]["lr"]]
    flat = run_figure(simulate_report(simulate(RunSpec(steps=3))))
    assert flat.axes[1].get_yscale() == "linear"


# --------------------------------------------------------------------------- timeline


@pytest.fixture(scope="module")
def faulty_timeline(tmp_path_factory):
    """``optstate.timeline`` of a real AdamW run (scripts/example_faulty_run.py): a NaN in
    hidden.weight's gradient at step 40, every lr x1000 at step 70, saved every 10 steps."""
    import optstate
    from tests.conftest import ROOT

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import example_faulty_run
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    run = tmp_path_factory.mktemp("timeline") / "run"
    example_faulty_run.train(run, steps=80)
    return optstate.timeline(run, use_cache=False)


def test_timeline_picture_draws_the_reported_norms_entries_with_findings_first(
        faulty_timeline, tmp_path):
    report = faulty_timeline
    fig = timeline_figure(report)
    ax_norm, ax_lr = fig.axes
    steps = [c["step"] for c in report["checkpoints"]]
    curves = timeline_curves(report)
    assert len(curves) == TIMELINE_CURVES < len(report["series"])  # 12 entries, 8 drawn
    # the first finding is hidden.weight's NaN at step 40: its entries come first
    assert [(c["name"], c["entry"]) for c in curves[:2]] == [
        ("hidden.weight", "exp_avg"), ("hidden.weight", "exp_avg_sq")]
    lines = [ln for ln in ax_norm.get_lines() if ln.get_label() in
             {f"{c['name']}.{c['entry']}" for c in curves}]
    assert [ln.get_label() for ln in lines] == [f"{c['name']}.{c['entry']}" for c in curves]
    for line, c in zip(lines, curves, strict=True):
        assert list(line.get_xdata()) == steps
        want = [v if isinstance(v, float) and v > 0 else None for v in c["norm"]]
        got = [None if np.isnan(v) else v for v in line.get_ydata()]
        assert got == want
    assert ax_norm.get_yscale() == "log"
    # the lr panel: both groups' lr as recorded, and their scheduler's dashed; x1000 at 70
    lr_lines = [ln for ln in ax_lr.get_lines() if ln.get_label().startswith("group")]
    solid = [ln for ln in lr_lines if ln.get_linestyle() == "-"]
    dashed = [ln for ln in lr_lines if ln.get_linestyle() == "--"]
    assert [ln.get_label() for ln in solid] == ["group 0", "group 1"]
    assert [list(ln.get_ydata()) for ln in solid] == [g["lr"] for g in report["lr"]]
    assert [list(ln.get_ydata()) for ln in dashed] == [g["scheduled_lr"] for g in report["lr"]]
    # a vertical line at every checkpoint with a finding, its codes beside it
    marked = sorted({report["checkpoints"][f["checkpoint"]]["step"]
                     for f in report["findings"]})
    assert marked == [40, 50, 70]
    texts = {t.get_text().strip() for t in ax_norm.texts}
    assert {"nan", "lr_off_schedule"} <= texts
    path = save_figure(fig, tmp_path / "timeline.png")
    assert pixels(path).shape[:2] == (TIMELINE_SIZE[1], TIMELINE_SIZE[0])
    again = save_figure(timeline_figure(report), tmp_path / "again.png")
    assert again.read_bytes() == path.read_bytes()


def test_timeline_picture_marks_nan_where_the_entry_holds_some(faulty_timeline):
    report = faulty_timeline
    fig = timeline_figure(report)
    ax_norm = fig.axes[0]
    crosses = [ln for ln in ax_norm.get_lines() if ln.get_marker() == "x" and
               len(ln.get_xdata())]
    # hidden.weight.exp_avg at 40 (one NaN, a finite norm: on its curve), then from 50 on
    # every drawn entry is all NaN (no norm: at the top edge)
    on_curve = crosses[0]
    assert list(on_curve.get_xdata()) == [40]
    hidden = timeline_curves(report)[0]
    assert list(on_curve.get_ydata()) == [hidden["norm"][3]]
    tops = [ln for ln in crosses if list(ln.get_ydata()) and ln.get_ydata()[0] == 0.97]
    assert tops and all(list(ln.get_xdata()) == [50, 60, 70, 80] for ln in tops)
