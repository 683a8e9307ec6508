"""``python -m shardc.runtime.serving_worker``: one rank of a serving programs run.

Started by :func:`shardc.runtime.launch.run_processes` (one process per rank over
torch.distributed, gloo on CPU), it runs what a serving rank runs: its prefill program on
the prompt, then its decode-step program ``steps`` times, its own KV cache kept in this
process from one program to the next (nothing about the cache crosses processes: the
collectives are the programs' own). The tokens and positions come in ``feeds.npz`` (the
reference's greedy tokens, so both sides decode the same sequence); the logits of every
step and the final cache go to ``out<rank>.npz`` as ``m<step>/logits`` and
``m<steps>/cache/<past name>``. Failures are reported the way :mod:`shardc.runtime.worker`
reports them (``rank<R>.err``), which the launcher reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shardc.runtime.worker import failed, report, start


def main(argv: list[str] | None = None) -> int:
    """Run this rank (``RANK``) of the programs folder; see the module doc."""
    args, rank, work, publish = start("python -m shardc.runtime.serving_worker", "programs",
                                      argv)
    root = Path(args.programs)
    from shardc.runtime.distributed import RankRunner

    try:
        index = json.loads((root / "programs.json").read_text())
        publish("joining the process group")
        runners = {phase: RankRunner(root / index["phases"][phase]["folder"],
                                     timeout=args.timeout, check_shapes=args.check_shapes)
                   for phase in ("prefill", "decode")}
        for runner in runners.values():
            runner.program.publish = publish
        feeds = np.load(work / "feeds.npz")
        ids, tokens, positions = (feeds[f"r0/m0/{k}"] for k in ("ids", "tokens", "positions"))
        cache = index["cache"]
        got = runners["prefill"].run({"input_ids": ids})
        out = {"m0/logits": got["logits"]}
        past = {e["past"]: got[e["present"]] for e in cache}
        for k in range(len(tokens)):
            step = {"input_ids": tokens[k], index["position"]: positions[k:k + 1], **past}
            got = runners["decode"].run(step, k)
            out[f"m{k + 1}/logits"] = got["logits"]
            past = {e["past"]: got[e["present"]] for e in cache}
        out.update({f"m{len(tokens)}/cache/{name}": v for name, v in past.items()})
        np.savez(work / f"out{rank}.npz", **out)
        compute: list[float] = []
        comm: list[float] = []
        for runner in runners.values():
            compute += runner.program.timings.compute
            comm += runner.program.timings.comm
        code = report(work, rank, compute, comm, list(range(len(tokens) + 1)))
        for runner in reversed(list(runners.values())):
            runner.close()
        return code
    except Exception as exc:  # reported by the launcher, named with this rank
        return failed(work, rank, exc)


if __name__ == "__main__":
    raise SystemExit(main())
