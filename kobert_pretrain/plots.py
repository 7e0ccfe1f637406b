"""Figures as PNG bytes, drawn with matplotlib's Agg backend (no display needed), for every stage's report."""

from __future__ import annotations

import io


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: only reports need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig, dpi: float | None = None) -> bytes:
    """The figure laid out tightly, as PNG bytes (at `dpi`, else the figure's own); the figure is closed."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi or "figure")
    pyplot().close(fig)
    return buffer.getvalue()
