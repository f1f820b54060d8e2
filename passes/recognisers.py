"""Every recogniser of the pass, in the order they are tried: the table of contents of the data path.

window sources (node -> windows)      reductions (windows, user -> reduction)   both at once
  unfold_windows        x.unfold        weighted_sum    (u * w).sum / .mean     average_pool   avg_pool1d/2d/3d
  gathered_windows      x[arange idx]   window_einsum   einsum(u, w)            window_loop    stack/cat of windows
  block_view_windows    x.view(.., l,)  window_mean     u.mean / u.sum
  strided_windows       x.as_strided    window_matmul   u @ w, F.linear
  rolled_windows        roll + cat
"""

from __future__ import annotations

from .assembled_sources import gathered_windows, rolled_windows
from .loops import window_loop
from .pooling import average_pool
from .reductions import REDUCTIONS
from .window_sources import block_view_windows, strided_windows, unfold_windows

WINDOW_SOURCES = (
    unfold_windows,
    gathered_windows,  # before block views: a gather + view is windows of x, not blocks of the gathered copy
    block_view_windows,
    strided_windows,
    rolled_windows,
)

#: recognisers that find the windows and their reduction together
COMBINED = (average_pool, window_loop)

__all__ = ["COMBINED", "REDUCTIONS", "WINDOW_SOURCES"]
