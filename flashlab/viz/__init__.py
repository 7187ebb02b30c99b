"""Every picture flashlab draws (matplotlib, imported only when a picture is asked for).

The tutorials (tutorials/*.py) call these functions and carry no drawing code of their own.
Each `draw_*` function returns a matplotlib Figure, already closed, so a notebook cell that ends
with the call shows it exactly once, and a script can `fig.savefig(...)` it.

HBM panels show whole tensors (rows of one head); the tiles that sit in SRAM during the step are
outlined: query-side tiles (Q_i, O_i, l_i, m_i, dO_i, dQ_i) in orange, key-side tiles (K_j, V_j,
dK_j, dV_j) in blue. Each outline carries a gid "sram:<tile>" so tests can find it. Tile indices
i, j count from 0, as in the code and in the traces ("step (i=0, j=1)").

One module per idea (import from flashlab.viz; the modules are how the code is laid out):

* _mpl.py: the lazy matplotlib import, `show`, the two tile colours Q_SIDE and K_SIDE.
* steps.py: one step of Algorithm 1 (draw_a1_step) and of the backward pass B1
  (draw_backward_step), HBM above and SRAM below; built from the panels in tiles.py.
* sliders.py: step_slider, step_frames and Frames, to move through those steps.
* softmax.py: draw_online_softmax, one row of scores a block at a time.
* charts.py: bench_plot, traffic_plot, draw_loop_order, loss_plot.
* tracediff.py: draw_trace_diff, where two traces differ.
* sources.py: source_table and SourceTable, a kernel beside its reference, line by line.
* blocks.py: draw_block_mask, an attention variant's mask by entry and by tile.
* ring.py: draw_ring, which rank computes which chunk pair at each step of ring attention.
* timeline.py: draw_timeline, which warpgroup does which step when (the Hopper ladder's schedule).
"""
from ._mpl import K_SIDE, Q_SIDE, _pyplot, show
from .blocks import draw_block_mask
from .charts import bench_plot, draw_loop_order, loss_plot, traffic_plot
from .sliders import Frames, step_frames, step_slider
from .softmax import draw_online_softmax
from .sources import SourceTable, source_table
from .steps import draw_a1_step, draw_backward_step
from .ring import draw_ring
from .timeline import draw_timeline
from .tracediff import draw_trace_diff

__all__ = ["Q_SIDE", "K_SIDE", "show", "bench_plot", "traffic_plot", "draw_online_softmax",
           "draw_a1_step", "draw_backward_step", "step_slider", "step_frames", "Frames",
           "draw_trace_diff", "draw_loop_order", "SourceTable", "source_table", "loss_plot",
           "draw_block_mask", "draw_ring", "draw_timeline"]
