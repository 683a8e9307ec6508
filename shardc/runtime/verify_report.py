"""What ``shardc verify`` reports: every output's error against onnxruntime, per-rank
times, and the tolerances by dtype; rich tables and ``--json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

RTOL = {
    np.dtype("float64"): 1e-9,
    np.dtype("float32"): 1e-5,
    np.dtype("float16"): 1e-2,
}
"""Default tolerance per dtype, relative to the reference output's largest magnitude."""


@dataclass(frozen=True)
class OutputCheck:
    """The worst error of one output over every rank and micro-batch that holds it."""

    name: str
    """The graph output's name (the same in the model and the device programs)."""
    dtype: str
    shape: tuple[int, ...]
    compared: int
    """How many (rank, micro-batch) copies of the output were compared."""
    max_abs: float
    """Largest absolute difference from the reference, over all copies."""
    max_rel: float
    """``max_abs`` over the reference's largest magnitude (what ``rtol`` bounds)."""
    rtol: float
    """The tolerance applied (0: must be equal)."""
    worst: str
    """Where the largest error is: ``rank R, micro-batch M``."""
    ok: bool


@dataclass(frozen=True)
class RankTiming:
    """Measured seconds per step next to the schedule's estimate, for one rank."""

    rank: int
    device: str
    """The topology device the rank stands for."""
    stage: int
    replica: int
    microbatches: int
    """Forward passes the rank ran in the step."""
    compute: float
    """Seconds in onnxruntime (sessions built before timing)."""
    comm: float | None
    """Seconds in communication, waits included (None in-process: ranks take turns)."""
    est_compute: float
    """The schedule's forward compute seconds for the rank's step."""
    est_comm: float
    """The schedule's forward communication seconds for the rank's step."""


@dataclass
class VerifyReport:
    """What ``verify`` compared and measured; ``ok`` says whether the plan is right."""

    plan: str
    """The plan folder."""
    runner: str
    """``in-process`` or ``N processes, torch.distributed``."""
    slots: int
    """(replica, micro-batch) pairs run: ``dp × microbatches``."""
    outputs: list[OutputCheck] = field(default_factory=list)
    timings: list[RankTiming] = field(default_factory=list)
    wall_seconds: float = 0.0
    """Wall time of the plan's run (not the reference's)."""

    @property
    def ok(self) -> bool:
        return bool(self.outputs) and all(o.ok for o in self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "runner": self.runner,
            "slots": self.slots,
            "ok": self.ok,
            "outputs": [o.__dict__ | {"shape": list(o.shape)} for o in self.outputs],
            "ranks": [t.__dict__ for t in self.timings],
            "wall_seconds": self.wall_seconds,
        }

    def __rich__(self) -> Any:
        from rich.console import Group

        return Group(*self.tables())

    def tables(self) -> list[Any]:
        """The per-output error table and the per-rank timing table (rich)."""
        from rich.table import Table

        from shardc.report.text import markup_safe

        out = Table(title=f"outputs ({self.slots} micro-batch slots, {self.runner})")
        for col in ("output", "dtype", "shape", "compared", "max abs", "max rel"):
            out.add_column(col, justify="left" if col in ("output", "dtype") else "right")
        out.add_column("rtol", justify="right")
        out.add_column("", justify="left")
        for o in self.outputs:
            out.add_row(
                markup_safe(o.name),
                o.dtype,
                "×".join(map(str, o.shape)),
                str(o.compared),
                f"{o.max_abs:.3g}",
                f"{o.max_rel:.3g}",
                f"{o.rtol:.0e}" if o.rtol else "exact",
                "[green]ok[/]" if o.ok else f"[red]MISMATCH[/] ({markup_safe(o.worst)})",
            )
        ranks = Table(title="ranks: measured ms per step vs the schedule's estimate (forward)")
        for col in ("rank", "device", "stage", "replica", "µb"):
            ranks.add_column(col, justify="right" if col != "device" else "left")
        for col in ("compute", "comm+wait", "est compute", "est comm"):
            ranks.add_column(col, justify="right")
        for t in self.timings:
            ranks.add_row(
                str(t.rank),
                markup_safe(t.device),
                str(t.stage),
                str(t.replica),
                str(t.microbatches),
                _ms(t.compute),
                "n/a" if t.comm is None else _ms(t.comm),
                _ms(t.est_compute),
                _ms(t.est_comm),
            )
        return [out, ranks]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


