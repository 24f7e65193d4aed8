"""Matplotlib figures of a fixed size, from its object API (not pyplot): no backend, no window,
no global state; what every picture of the project is drawn on."""

from matplotlib.figure import Figure

DPI = 100  # pixels per inch of the PNGs (visualize.py: `dpi=`)


def figure(width: float, height: float, ncols: int = 1, nrows: int = 1, axes: bool = True):
    """A `width` x `height` inch figure of `nrows` x `ncols` panels -> (figure, flat axes);
    `axes=False` hides their axes (pictures, not plots)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    panels = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax in panels:
        ax.axis("on" if axes else "off")
    return fig, panels
