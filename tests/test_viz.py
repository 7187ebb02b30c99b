"""The tutorial pictures: each is drawn, says what it shows, and outlines the right tiles."""
import sys

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from flashlab import trace, viz  # noqa: E402
from flashlab.hbm import MemoryCounter, a1_traffic  # noqa: E402
from flashlab.reference import (fa1_backward_steps, fa1_forward, fa1_forward_steps,  # noqa: E402
                                fa2_backward_steps, fa2_forward_steps, naive_attention,
                                naive_attention_backward)
from conftest import qkv  # noqa: E402

# ragged on purpose: the last Q block has 2 rows, the last K/V block 3
Nq, Nk, d, Br, Bc = 10, 13, 3, 4, 5


def _record(gen):
    counter = MemoryCounter()
    steps, traffic = [], []
    for step in gen(counter):
        steps.append(step)
        traffic.append(counter.traffic())
    return steps, traffic, counter


@pytest.fixture
def a1(rng):
    q, k, v = qkv(rng, 1, 2, Nq, Nk, d)
    steps, traffic, counter = _record(
        lambda c: fa1_forward_steps(q, k, v, Br=Br, Bc=Bc, counter=c))
    return q, k, v, steps, traffic, counter


@pytest.fixture
def b1(rng):
    q, k, v = qkv(rng, 1, 1, Nq, Nk, d)
    do = rng.standard_normal(q.shape)
    o, lse = fa1_forward(q, k, v, Br=Br, Bc=Bc)
    steps, traffic, _ = _record(
        lambda c: fa1_backward_steps(do, q, k, v, o, lse, Br=Br, Bc=Bc, counter=c))
    return q, k, v, o, do, steps, traffic


def _axes(fig, title_start):
    hits = [ax for ax in fig.axes if ax.get_title().startswith(title_start)]
    assert len(hits) == 1, (title_start, [ax.get_title() for ax in fig.axes])
    return hits[0]


def _outlines(fig):
    """{gid: (axes title, x, y, width, height)} of the tile outlines a figure carries."""
    found = {}
    for ax in fig.axes:
        for p in ax.patches:
            gid = p.get_gid()
            if gid and gid.startswith("sram:"):
                found[gid[5:]] = (ax.get_title(), p.get_x(), p.get_y(), p.get_width(),
                                  p.get_height())
    return found


def test_a1_step_outlines_the_tiles_in_sram_at_their_rows(a1):
    q, k, v, steps, traffic, _ = a1
    for t, step in enumerate(steps):
        fig = viz.draw_a1_step(steps, t, q, k, v, traffic)
        br = min(Br, Nq - step.i * Br)
        bc = min(Bc, Nk - step.j * Bc)
        want = {"Q_i": ("Q (", step.i * Br, br, d), "O_i": ("O after", step.i * Br, br, d),
                "l_i": ("l", step.i * Br, br, 1), "m_i": ("m", step.i * Br, br, 1),
                "K_j": ("K (", step.j * Bc, bc, d), "V_j": ("V (", step.j * Bc, bc, d)}
        got = _outlines(fig)
        assert set(got) == set(want)
        for gid, (title, start, n, width) in want.items():
            ax_title, x, y, w, h = got[gid]
            assert ax_title.startswith(title) and (x, y, w, h) == (-0.5, start - 0.5, width, n), gid


def test_a1_step_shows_sram_tiles_rows_traffic_and_lines(a1):
    q, k, v, steps, traffic, counter = a1
    fig = viz.draw_a1_step(steps, len(steps) - 1, q, k, v, traffic)
    for title in ("Q (", "K (", "V (", "O after this step", "S_ij = tau Q_", "P~_ij",
                  "row max m (A1:L11)", "row sum l (A1:L11)"):
        _axes(fig, title)
    # the tile panels hold this step's tiles of head (0, 0)
    S = _axes(fig, "S_ij").images[0].get_array()
    assert np.allclose(S, steps[-1].S_ij[0, 0])
    # the traffic panel is the counter's total after the last step
    assert f"{counter.hbm_elements:,} elements" in _axes(fig, "HBM traffic so far").get_title()
    assert counter.traffic() == a1_traffic(1, 2, Nq, Nk, d, Br, Bc)
    texts = [t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("A1:L12" in t and "O_i <- diag" in t for t in texts)
    assert any(f"step {len(steps)} of {len(steps)}" in t for t in texts)


def test_a1_step_draws_o_l_m_as_they_stand_in_hbm(a1):
    q, k, v, steps, traffic, _ = a1
    o, _ = naive_attention(q, k, v)
    first = viz.draw_a1_step(steps, 0, q, k, v)
    O0 = np.asarray(_axes(first, "O after").images[0].get_array())
    assert np.allclose(O0[Br:], 0)  # only O_0 has been written after step (0, 0)
    last = viz.draw_a1_step(steps, len(steps) - 1, q, k, v)
    assert np.allclose(_axes(last, "O after").images[0].get_array(), o[0, 0])


def test_a1_step_accepts_one_traffic_and_refuses_other_algorithms(a1, b1):
    q, k, v, steps, traffic, _ = a1
    fig = viz.draw_a1_step(steps, 1, q, k, v, traffic[1])
    assert "HBM traffic so far" in _axes(fig, "HBM traffic").get_title()
    with pytest.raises(ValueError, match="draw_backward_step"):
        viz.draw_a1_step(b1[5], 0, q, k, v)


def test_backward_step_outlines_and_writes_dk_dv_only_after_their_loop(b1):
    q, k, v, o, do, steps, traffic = b1
    Tr = -(-Nq // Br)
    for t, step in enumerate(steps):
        fig = viz.draw_backward_step(steps, t, q, k, v, o, do, traffic)
        got = _outlines(fig)
        want = {"Q_i", "O_i", "dO_i", "dQ_i", "K_j", "V_j"}
        if step.i == Tr - 1:
            want |= {"dK_j", "dV_j"}  # dashed: B1:L15 writes them right after this step
        assert set(got) == want
        assert got["dQ_i"][2] == step.i * Br - 0.5 and got["K_j"][2] == step.j * Bc - 0.5
    dq, dk, _ = naive_attention_backward(do, q, k, v)
    last = viz.draw_backward_step(steps, len(steps) - 1, q, k, v, o, do, traffic)
    assert np.allclose(_axes(last, "dQ (B1:L12)").images[0].get_array(), dq[0, 0])
    dK = np.asarray(_axes(last, "dK (B1:L15)").images[0].get_array())
    last_j = steps[-1].j
    assert np.allclose(dK[: last_j * Bc], dk[0, 0, : last_j * Bc])
    assert np.allclose(dK[last_j * Bc:], 0)  # written after the last step, as the counter says
    for title in ("P_ij = exp", "dP_ij", "D_i", "dS_ij", "dK~_", "dV~_"):
        _axes(last, title)


def test_online_softmax_figure(rng):
    x = rng.standard_normal(10)
    m, l, ms, ls = -np.inf, 0.0, [], []
    for s in range(0, 10, 4):
        m_new = max(m, x[s:s + 4].max())
        l = np.exp(m - m_new) * l + np.exp(x[s:s + 4] - m_new).sum()
        m = m_new
        ms.append(m)
        ls.append(l)
    fig = viz.draw_online_softmax(x, 4, ms, ls)
    assert len(fig.axes) == 3
    assert "A1:L10-L11" in fig.axes[0].get_title()
    assert "max difference" in fig.axes[2].get_title()
    with pytest.raises(ValueError, match="one value per block"):
        viz.draw_online_softmax(x, 4, ms[:2], ls[:2])


def test_traffic_plot_draws_closed_forms_and_counted_points():
    fig = viz.traffic_plot([64, 256, 1024], d=16, measured={"A0": [(64, 12345)]})
    ax1, axr, ax2 = fig.axes
    labels = [line.get_label() for line in ax1.lines]
    assert any(lab.startswith("A0 standard") for lab in labels)
    assert any("counted by MemoryCounter" in lab for lab in labels)
    assert ax1.get_yscale() == "log" and ax2.get_title().startswith("extra HBM memory")
    # A0, A1 and F2 differ in line style and marker, so one drawn over another still shows
    styles = {line.get_label()[:2]: (line.get_linestyle(), line.get_marker())
              for line in ax1.lines if line.get_label()[:2] in ("A0", "A1", "F2")
              and "counted" not in line.get_label()}
    assert len(set(styles.values())) == 3
    assert "A1 Algorithm 1 (16 x 192 tiles)" in labels  # A1:L1 at M = 12288, d = 16
    assert any("(192 x 24 tiles)" in lab for lab in labels)  # F2's own tiles


def test_traffic_plot_ratio_panel_shows_how_many_times_less_than_a0():
    from flashlab import hbm

    d, M, N = 64, 49152, 16384
    fig = viz.traffic_plot([1024, N], d=d, sram=M)
    axr = fig.axes[1]
    assert axr.get_xlabel().startswith("SRAM size M") and f"N = {N}" in axr.get_title()
    curves = {line.get_label(): line for line in axr.lines}
    ms, a1 = curves["A0 / A1"].get_data()
    _, f2 = curves["A0 / F2"].get_data()
    k = list(ms).index(M)
    a0 = hbm.a0_traffic(1, 1, N, N, d).total
    assert a1[k] == pytest.approx(a0 / hbm.a1_traffic(1, 1, N, N, d, 64, 192).total)  # 3.9x
    assert f2[k] == pytest.approx(a0 / hbm.f2_traffic(1, 1, N, N, d, 192, 75).total)  # 5.9x
    assert all(f > a for f, a in zip(f2, a1))  # F2 moves less than A1 at every M
    assert a1[list(ms).index(hbm.DEFAULT_SRAM)] < 1  # A1 breaks even near M = 3 d^2
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("3.9x the bytes of A1" in t and "5.9x those of F2" in t for t in texts)


def test_loop_order_marks_visited_skipped_and_masked_tiles(rng):
    q, k, v = qkv(rng, 1, 1, 20, 20, 4)
    do = rng.standard_normal(q.shape)
    o, lse = naive_attention(q, k, v, True)
    runs = {"A1": list(fa1_forward_steps(q, k, v, True, Br=5, Bc=5)),
            "F2": list(fa2_forward_steps(q, k, v, True, Br=5, Bc=5)),
            "G2": list(fa2_backward_steps(do, q, k, v, o, lse, True, Br=5, Bc=5))}
    fig = viz.draw_loop_order(runs)
    for ax, steps in zip(fig.axes, runs.values()):
        visited = [p for p in ax.patches if p.get_gid() == "visited"]
        skipped = [p for p in ax.patches if p.get_gid() == "skipped"]
        assert len(visited) == len(steps) and len(visited) + len(skipped) == 16
        assert len(ax.texts) == len(steps)
    a1_texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum("all masked" in t for t in a1_texts) == 6  # A1 visits the 6 tiles above the diagonal


def test_trace_diff_outlines_the_first_divergence(rng):
    q, k, v = qkv(rng, 1, 1, 12, 12, 3)
    expected, _ = trace.record(fa1_forward_steps(q, k, v, Br=4, Bc=4))
    actual, _ = trace.record(fa1_forward_steps(q, k, v, Br=4, Bc=4), label="student")
    actual.values["O_i"][0, 0, 2, 1, 1, 0] += 1.0
    div = trace.compare(expected, actual)
    fig = viz.draw_trace_diff(expected, actual, div)
    boxes = [(p.get_x(), p.get_y()) for ax in fig.axes for p in ax.patches
             if p.get_gid() == "first-divergence"]
    assert boxes == [(1 - 0.5, 2 - 0.5)]
    assert "student diverges at step (i=2, j=1)" in fig._suptitle.get_text()


def test_step_slider_falls_back_to_still_frames_without_ipywidgets(monkeypatch):
    drawn = []

    def draw(t):
        drawn.append(t)
        return viz.traffic_plot([64, 128], d=8)

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets raises ImportError
    frames = viz.step_slider(7, draw)
    assert isinstance(frames, viz.Frames) and drawn == [0, 3, 6]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in frames)
    assert len(viz.step_slider(5, draw, frames=[4, 1])) == 2 and drawn[-2:] == [1, 4]
    with pytest.raises(ImportError):
        viz.step_slider(5, draw, widgets=True)
    with pytest.raises(ValueError, match="out of range"):
        viz.step_frames(3, draw, frames=[3])


def test_step_slider_outside_a_kernel_uses_frames_and_with_widgets_a_slider():
    pytest.importorskip("ipywidgets")
    calls = []

    def draw(t):
        calls.append(t)
        return viz.traffic_plot([64, 128], d=8)

    assert isinstance(viz.step_slider(2, draw), viz.Frames)  # no kernel: widgets cannot render
    box = viz.step_slider(4, draw, widgets=True)
    slider = box.children[0]
    assert (slider.min, slider.max, slider.value) == (0, 3, 0)
    slider.value = 2
    assert calls[-2:] == [0, 2]


def test_source_table_sets_kernel_beside_reference():
    table = viz.source_table("fa1", "A1")
    rows = {label: (kern, ref) for label, _, kern, ref in table.rows}
    loop = [lab for lab in rows if 5 <= int(lab.split(":L")[1]) <= 13]
    assert loop == [f"A1:L{n}" for n in range(5, 14)]  # the loop nest, in the paper's order
    assert all(kern for lab, (kern, _) in rows.items() if lab in loop)  # every one in the kernel
    kern, ref = rows["A1:L12"]
    assert "keep[r] * O_i" in kern and "P_tilde_ij @ V_j" in ref
    assert "&lt;" in table._repr_html_() and "A1:L12" in str(table)
    assert {label for label, *_ in viz.source_table("fa1", "B1").rows} >= {"B1:L7", "B1:L12"}
    with pytest.raises(ValueError, match="no source"):
        viz.source_table("nope", "A1")


def test_show_is_a_no_op_outside_jupyter(capsys):
    import matplotlib.pyplot as plt

    from flashlab.viz import show

    fig = plt.figure()
    show(fig)  # a script (scripts/run_tutorials.py) runs notebook code: nothing to display, no error
    assert capsys.readouterr().out == ""
    plt.close(fig)


def test_viz_is_a_package_of_small_modules_that_imports_no_matplotlib_until_asked():
    import subprocess
    from pathlib import Path

    pkg = Path(viz.__file__).parent
    assert pkg.name == "viz" and all(len(p.read_text().splitlines()) < 500
                                     for p in pkg.glob("*.py"))
    assert all(hasattr(viz, name) for name in viz.__all__)
    code = "import sys, flashlab.viz; print(sorted(m for m in sys.modules if 'matplotlib' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_block_mask_is_drawn_entry_by_entry_and_tile_by_tile():
    from flashlab import mods
    from flashlab.mods.kernel import KernelVariant

    N = 80
    kv = KernelVariant.of((20, 0), None, None)
    tiles = kv.tiles(1, 1, N, N, 16, 32)[0, 0]
    visible = mods.sliding_window(20, 0).mask(0, 0, np.arange(N)[:, None], np.arange(N)[None, :])
    fig = viz.draw_block_mask(visible, tiles, 16, 32)
    left, right = fig.axes
    grid = [ln for ln in right.get_lines() if ln.get_gid() == "tile-grid"]
    assert len(grid) == (N // 32 + 1) + (N // 16 + 1)  # x lines at 0, 32, 64; y at 0 .. 80
    labels = [t.get_text() for t in right.texts]
    assert labels == [str(int(f)) for f in tiles.ravel()] and "0" in labels and "1" in labels
    assert left.images[0].get_array().shape == (N, N)


def test_draw_ring_colours_every_visible_chunk_pair_once_over_the_steps():
    fig = viz.draw_ring(3, True)
    panels = [ax for ax in fig.axes if (ax.get_gid() or "").startswith("ring-step-")]
    assert [ax.get_gid() for ax in panels] == ["ring-step-0", "ring-step-1", "ring-step-2"]
    grids = [np.asarray(ax.images[0].get_array()) for ax in panels]
    computed = sum((g >= 2).astype(int) for g in grids)  # 0 white, 1 masked, 2 + rank computed
    np.testing.assert_array_equal(computed, np.tril(np.ones((6, 6), int)))
    assert sum(t.get_text() == "d" for ax in panels for t in ax.texts) == 6  # the diagonal, once
