"""Fit a device kind's efficiency lines to AIConfigurator's measured GEMM kernels.

Run with the Python of AIConfigurator's own venv (it needs pandas and the package's data;
shardc is not imported): ``python tests/bench/aic_kernel_fit.py h200_sxm``. It prints one
JSON line: the fitted ``efficiency compute`` factor and its small-GEMM curve, ``efficiency
memory``, ``launch``, and the mean / worst |error| of kernel latency on the FIT half and on
the HELD-OUT half of the table.

Source: ``aiconfigurator_core/systems/data/<system>/gemm/trtllm/<ver>/gemm_perf.parquet``
(AIConfigurator 0.12.0, REFERENCE.md §3.4): latencies in ms of TRT-LLM GEMMs measured on
the real GPU, bf16 rows only (the kinds' bf16 peak is the reference). The model is
shardc's roofline (``shardc/cost/compute.py``)::

    t = max(F / (P·η_c(F/P)), B / (BW·η_m(B))) + launch

with B the weight, input and output bytes of the GEMM. Rows are split by a hash of
(m, n, k): even hashes are fitted, odd ones held out, so the held-out error says how the
fitted lines carry to GEMM shapes they never saw.
"""

from __future__ import annotations

import glob
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

PEAK = 989.4e12
BANDWIDTH = {"h200_sxm": 4.8e12, "h100_sxm": 3.35e12}
CURVE_AT = (1e-6, 3e-6, 10e-6, 30e-6)
"""Times at peak where the compute curve gets a point (the knee is the plain factor)."""
MEM_AT = (1e6, 1e7)
"""Sizes (bytes) where the memory curve gets a point."""


def table(system: str) -> pd.DataFrame:
    """The bf16 rows of the system's measured GEMM table, with FLOPs and bytes."""
    import aiconfigurator_core
    root = Path(aiconfigurator_core.__file__).parent / "systems/data" / system / "gemm/trtllm"
    (path,) = sorted(glob.glob(str(root / "*/gemm_perf.parquet")))[-1:]
    df = pd.read_parquet(path)
    df = df[df.gemm_dtype == "bfloat16"].copy()
    df["seconds"] = df.latency * 1e-3
    df["flops"] = 2.0 * df.m * df.n * df.k
    df["bytes"] = 2.0 * (df.n * df.k + df.m * df.k + df.m * df.n)
    df["held"] = [zlib.crc32(f"{m},{n},{k}".encode()) % 2 == 1
                  for m, n, k in zip(df.m, df.n, df.k, strict=True)]
    return df


def curve(points: list[tuple[float, float]], top: float, x: np.ndarray) -> np.ndarray:
    """Shardc's log-linear efficiency curve (cost/compute.py `efficiency`), vectorised."""
    xs = np.log([p[0] for p in points])
    ys = [p[1] for p in points]
    return np.where(x >= points[-1][0], top, np.interp(np.log(np.maximum(x, 1e-30)), xs, ys))


COMPUTE_KNEE = 100e-6
MEMORY_KNEE = 100e6
"""Where each curve reaches its plain factor (docs/dsl.md: list the knee at the plain
factor), so the kind's lines read as one continuous curve."""


def predict(df: pd.DataFrame, bw: float, p: dict[str, object]) -> np.ndarray:
    """The roofline's latency of every row under parameters ``p``."""
    tpk = df.flops.to_numpy() / PEAK
    c_pts = [*p["compute_curve"], (COMPUTE_KNEE, p["compute"])]  # type: ignore[misc]
    m_pts = [*p["memory_curve"], (MEMORY_KNEE, p["memory"])]  # type: ignore[misc]
    eta_c = curve(c_pts, p["compute"], tpk)  # type: ignore[arg-type]
    eta_m = curve(m_pts, p["memory"], df.bytes.to_numpy())  # type: ignore[arg-type]
    return np.maximum(tpk / eta_c, df.bytes.to_numpy() / (bw * eta_m)) + p["launch"]


def errors(df: pd.DataFrame, bw: float, p: dict[str, object]) -> tuple[float, float]:
    """(mean, worst) |predicted / measured − 1| over the rows."""
    r = np.abs(predict(df, bw, p) / df.seconds.to_numpy() - 1.0)
    return float(r.mean()), float(r.max())


def fit(system: str) -> dict[str, object]:
    """Coordinate search of the lines on the fit half; errors on both halves."""
    df, bw = table(system), BANDWIDTH[system]
    fit_rows, held = df[~df.held], df[df.held]
    p: dict[str, object] = {"compute": 0.75, "memory": 0.85, "launch": 3e-6,
                            "compute_curve": [(t, 0.75) for t in CURVE_AT],
                            "memory_curve": [(s, 0.85) for s in MEM_AT]}

    def loss(q: dict[str, object]) -> float:
        return float(np.mean(np.abs(np.log(predict(fit_rows, bw, q) / fit_rows.seconds))))

    grid = np.round(np.arange(0.30, 1.001, 0.01), 2)
    for _ in range(3):  # coordinate descent: each line in turn over its grid
        for key in ("compute", "memory"):
            p[key] = min(grid, key=lambda v, k=key: loss({**p, k: float(v)}))
        p["launch"] = min(np.arange(0, 8.01, 0.25) * 1e-6,
                          key=lambda v: loss({**p, "launch": float(v)}))
        for name in ("compute_curve", "memory_curve"):
            pts = list(p[name])  # type: ignore[call-overload]
            for i, (x, _) in enumerate(pts):
                def with_point(v: float, i: int = i, x: float = x, name: str = name,
                               pts: list[tuple[float, float]] = pts) -> dict[str, object]:
                    return {**p, name: [*pts[:i], (x, v), *pts[i + 1:]]}
                best = min(grid, key=lambda v: loss(with_point(float(v))))
                pts[i] = (x, float(best))
            # the curve may not exceed the plain factor (shardc's knee convention)
            top = p["compute" if name == "compute_curve" else "memory"]
            p[name] = [(x, min(v, top)) for x, v in pts]  # type: ignore[type-var]
    fit_err, held_err = errors(fit_rows, bw, p), errors(held, bw, p)
    return {"system": system, **p, "rows_fit": len(fit_rows), "rows_held": len(held),
            "fit_mean_abs_err": fit_err[0], "fit_worst": fit_err[1],
            "held_mean_abs_err": held_err[0], "held_worst": held_err[1],
            "held_median_abs_err": float(np.median(np.abs(
                predict(held, bw, p) / held.seconds.to_numpy() - 1.0)))}


if __name__ == "__main__":
    for system in sys.argv[1:] or ["h200_sxm", "h100_sxm"]:
        print(json.dumps(fit(system)))
