"""Moving through the steps of an algorithm: an ipywidgets slider where a Jupyter kernel can show
one, else still pictures of a few steps (notebooks 3 and 5)."""
from __future__ import annotations

from ._mpl import _in_kernel


def step_slider(n: int, draw_fn, frames=None, widgets=None, description="step"):
    """Move through n steps: an ipywidgets slider that redraws draw_fn(t) where widgets work,
    else still pictures of `frames` (default: the first, a middle and the last step).

    widgets: None picks ipywidgets when it imports and a Jupyter kernel is running; False
    forces the still pictures; True forces the slider.
    Returns the widget (a notebook shows it), or a Frames list of figures that shows itself.
    """
    if n < 1:
        raise ValueError(f"step_slider needs at least one step, got n={n}")
    w = None
    if widgets is not False:
        try:
            import ipywidgets as w
        except ImportError:
            if widgets:
                raise
            w = None
        if w is not None and widgets is None and not _in_kernel():
            w = None
    if w is None:
        return step_frames(n, draw_fn, frames)
    from IPython.display import display

    slider = w.IntSlider(value=0, min=0, max=n - 1, step=1, description=description,
                         continuous_update=False)
    out = w.Output()

    def show(_change=None):
        fig = draw_fn(slider.value)
        with out:
            out.clear_output(wait=True)
            display(fig)

    slider.observe(show, names="value")
    show()
    return w.VBox([slider, out])


class Frames(list):
    """Figures that a notebook shows one after another (the still-picture fallback)."""

    def _ipython_display_(self):
        from IPython.display import display

        for fig in self:
            display(fig)


def step_frames(n: int, draw_fn, frames=None) -> Frames:
    """draw_fn(t) for each t in `frames` (default: first, middle, last), as still pictures."""
    picks = sorted(set(frames)) if frames is not None else sorted({0, (n - 1) // 2, n - 1})
    bad = [t for t in picks if not 0 <= t < n]
    if bad:
        raise ValueError(f"frames {bad} are out of range for {n} steps (0..{n - 1})")
    return Frames(draw_fn(t) for t in picks)
