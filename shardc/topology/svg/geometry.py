"""The grid, spacing and colours the SVG drawing is built on, and the measures of text and
rectangles that layout, routing and labels all use.

A module of its own so that each step (:mod:`.layout`, :mod:`.routing`, :mod:`.labels`)
takes its sizes from one place and the steps never import each other for a constant.
"""

from __future__ import annotations

import math

G = 4  # the routing grid, px; every box corner lies on it
PAD, TITLE, HGAP, VGAP, STACK = 16, 20, 32, 48, 8
LEAF_W, LEAF_H = 128, 36
CORRIDOR = 36  # a box below one whose links run on leaves this much of it free ...
LANE = 20  # ... and those links run down this far from its left side
LOOP_OUT = 20  # how far a mesh loop reaches out of the right side of its box
MAX_LEAVES_PER_ROW, MAX_ROW_WIDTH = 4, 1400
ORIGIN_X, ORIGIN_Y = 12, 40  # where the hierarchy starts (the header sits above)
EDGE_FONT, LABEL_H = 10, 12  # edge labels: font size, and the height of their box
CLEAR = 6  # an edge keeps this far from a box or group it does not belong to
BEND, FRAME, SHARED = 5.0, 2.0, (6.0, 3.0, 1.0)  # routing costs, in grid steps
LINK_COLOURS = {
    "nvlink": "#76b900", "c2c": "#2a9d8f", "ub": "#7b2cbf", "hccs": "#d62828",
    "sio": "#e76f51", "pcie": "#e9c46a", "cxl": "#bc6c25", "xgmi": "#9d0208",
    "rdma": "#f77f00", "roce": "#f77f00", "ib": "#1d4ed8", "ethernet": "#6b7280",
    "vpc": "#6b7280", "loopback": "#8d6e63", "tcp": "#8d6e63", "shm": "#8d6e63",
}
KIND_FILLS = ["#dbeafe", "#dcfce7", "#fef9c3", "#fae8ff", "#ffe4e6", "#e0f2fe", "#f1f5f9"]

Rect = tuple[float, float, float, float]  # x, y, w, h


def text_width(text: str, size: float, bold: bool = False) -> float:
    """A generous estimate of the rendered width of ``text`` in a sans-serif font."""
    return len(text) * size * (0.68 if bold else 0.6)


# Widths in em of the characters of a bold sans-serif (DejaVu Sans Bold, rounded up; most
# other sans-serif faces are narrower): group titles are measured with these, so that a
# path can run into a box just right of a short title.
_EM = {**dict.fromkeys(" .,:;'!|ijl[]()", 0.46), **dict.fromkeys("frt-/_", 0.5),
       **dict.fromkeys("0123456789", 0.7), **dict.fromkeys("mwMW×", 1.05)}


def _title_width(text: str, size: float) -> float:
    return size * sum(_EM.get(c, 0.8 if c.isupper() else 0.72) for c in text)


def _up(value: float) -> int:
    return math.ceil(value / G - 1e-9) * G


def _near(value: float) -> int:
    return round(value / G) * G


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _grow(r: Rect, by: float) -> Rect:
    return (r[0] - by, r[1] - by, r[2] + 2 * by, r[3] + 2 * by)
