"""A picture of a topology as SVG, written by hand (no graphviz binary to install).

The drawing is the folded hierarchy (:mod:`.hierarchy`): nested boxes for groups, with
repeated groups drawn once as a stack and labelled ``×48``; device ranges and switches as
small boxes. Links are folded the same way: every link between two drawn boxes becomes
one edge, coloured by link kind, as thick as the log of its bandwidth, and labelled
with the bandwidth and how many links it stands for. That keeps a 384-NPU CloudMatrix or
a 3,072-GPU SuperPOD to a screenful.

Three steps, all deterministic (the same topology gives the same bytes):

* **layout** -- inside every group the children sit in rows by their distance (in
  links) from the devices: devices on top, then the switches that serve them, then the
  tiers behind those. A row below is ordered and shifted so that each box sits under
  what it links to (the barycentre heuristic), which keeps tiers from crossing; where
  a box's links run on past the row below, that row leaves a lane free down its left.
* **routing** -- every edge is an orthogonal path found by A* on a 4 px grid. A path
  may not enter a box other than its two ends, nor a group that holds neither end, nor a
  group title; bends, running along a group's frame and sharing a channel with another
  edge cost extra, so paths stay straight and apart.
* **labels** -- each edge label is placed greedily beside a segment of its own path,
  as near the middle as it can go without covering a box, a title or another label.

The work is split along those steps: :mod:`.geometry` (the grid, the measures and the
text widths every step shares), :mod:`.layout`, :mod:`.routing`, :mod:`.labels`, and
:mod:`.draw`, which runs them in turn and writes the SVG.
"""

from shardc.topology.svg.draw import (
    DrawnEdge,
    LinkStyle,
    LinkStyler,
    Overlay,
    render_svg,
)
from shardc.topology.svg.geometry import Rect, text_width

__all__ = [
    "DrawnEdge",
    "LinkStyle",
    "LinkStyler",
    "Overlay",
    "Rect",
    "render_svg",
    "text_width",
]
