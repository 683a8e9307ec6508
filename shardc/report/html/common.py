"""Colours, limits and small formatting helpers shared by the sections of the HTML report.

Its own module so that the sections (:mod:`.tables`, :mod:`.timeline`, :mod:`.map`) agree
on one palette (a stage or a kind of time has the same colour in every picture) without
importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from shardc.plan.model import PlanData
from shardc.report.summary import human

SVG_NS = "http://www.w3.org/2000/svg"

#: Stage colours (Tableau 20, strong shades first): adjacent stages must differ at a glance.
STAGE_COLOURS = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#79706e", "#a0cbe8", "#ffbe7d", "#8cd17d", "#ff9d9a", "#86bcb6", "#f1ce63",
)  # fmt: skip
UNUSED = "#e2e8f0"
LOAD_LOW, LOAD_HIGH = "#fdba74", "#b91c1c"  # link traffic: a little ... the most

#: Timeline categories: (key, colour, legend). The breakdown bar uses the same colours for
#: the same kinds of time, so the two pictures read together.
CATEGORIES = (
    ("forward", "#4f7cc4", "forward compute"),
    ("backward", "#7fb069", "backward compute"),
    ("p2p", "#e05d5d", "pipeline send / recv"),
    ("collective", "#f0a030", "collective (tensor parallel)"),
    ("sync", "#8e6cc0", "dp sync + optimizer"),
)
_CAT_COLOUR = {key: colour for key, colour, _ in CATEGORIES}
BREAKDOWN_COLOURS = {
    "compute": _CAT_COLOUR["forward"],
    "tp comm": _CAT_COLOUR["collective"],
    "pp send/recv": _CAT_COLOUR["p2p"],
    "pipeline bubble": "#cbd5e1",
    "dp sync + optimizer": _CAT_COLOUR["sync"],
}
_EXTRA_COLOURS = ("#94a3b8", "#64748b", "#0ea5e9", "#14b8a6")

#: Up to this many devices the timeline has a row for each; above it, replica 0 only
#: (every replica runs the same program, so the others would repeat it row for row).
ALL_ROWS = 64
#: Above this many rows for replica 0, one row per stage (tensor-parallel rank 0).
MAX_ROWS = 128
TOP_LINKS = 10
TOPOLOGY_ID = "shardc-topology"


def _stage_colour(j: int) -> str:
    return STAGE_COLOURS[j % len(STAGE_COLOURS)]


def _tint(colour: str, amount: float) -> str:
    """``colour`` mixed with white: light enough for dark text to stay readable on it."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in (r, g, b))


def _mix(a: str, b: str, t: float) -> str:
    ca = [int(a[i : i + 2], 16) for i in (1, 3, 5)]
    cb = [int(b[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(ca, cb, strict=True))


def _share_colour(share: float) -> str:
    return "#16a34a" if share < 0.7 else "#d97706" if share < 0.9 else "#dc2626"


def _bar(share: float, colour: str | None = None, marks: Sequence[tuple[float, str]] = ()) -> str:
    """A CSS bar: ``share`` of it filled, with thin marks at other shares (titled)."""
    width = max(0.0, min(share, 1.0)) * 100
    fill = colour or _share_colour(share)
    ticks = "".join(
        f'<u style="left:calc({min(max(m, 0.0), 1.0) * 100:.2f}% - 1px)" title="{escape(t)}"></u>'
        for m, t in marks
    )
    return f'<span class="bar"><i style="width:{width:.2f}%;background:{fill}"></i>{ticks}</span>'


def _fact(label: str, value: str) -> str:
    """A header tile; ``value`` is HTML (callers escape)."""
    return f'<div class="fact"><b>{escape(label)}</b><span>{value}</span></div>'


def _swatch(colour: str) -> str:
    return f'<span class="sw" style="background:{colour}"></span>'


def _bytes(n: float | None) -> str:
    return human(n, "B") if n is not None else "-"


def _stage_devices(plan: PlanData) -> dict[str, tuple[int, int, int, int]]:
    """Device name -> (stage, replica, tp rank, process rank), from the plan's ranks (so
    the page names ranks as the runtime does).
    """
    return {r.device: (r.stage, r.replica, r.tp_rank, r.rank) for r in plan.ranks}
