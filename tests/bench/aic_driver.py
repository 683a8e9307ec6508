"""Price many configurations with AIConfigurator in one process (its venv's Python).

Reads a JSON list of ``cli_estimate`` keyword dicts on stdin, prints a JSON list of
``{"ttft": ms, "tpot": ms, "tokens_per_gpu": …, "seconds": wall}`` (or ``{"error": …}``).
One process loads AIConfigurator's measured kernel tables once (the CLI reloads them for
every call, ~19 s each). shardc is not imported: AIConfigurator is a peer, not a dependency.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time

from aiconfigurator.cli.api import cli_estimate


def main() -> None:
    """One estimate per input dict, in order."""
    out = []
    for kw in json.load(sys.stdin):
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                r = cli_estimate(**kw)
            out.append({"ttft": r.ttft, "tpot": r.tpot,
                        "tokens_per_gpu": r.tokens_per_second_per_gpu,
                        # which MoE exchange it priced, where it fell back to a table
                        "moe_comm": sorted({f"{f.inference_phase}:{f.comm_backend}"
                                            for f in (r.moe_comm_fallbacks or ())}),
                        "seconds": time.perf_counter() - start})
        except Exception as exc:
            out.append({"error": f"{type(exc).__name__}: {exc}"[:300]})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
