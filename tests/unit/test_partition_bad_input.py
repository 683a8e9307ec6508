"""Bad partitioning input is a one-line error and exit 2, never a traceback or a plan.

Issue 14: an impossible memory reserve, sequence parallelism pinned on a graph with no
sequence dim, interleaving that does not divide the layers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from shardc.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
TOPO = str(ROOT / "topologies" / "dgx_h100.topo")


def _synth(tmp: Path, name: str, seq: int) -> str:
    out = tmp / f"{name}.onnx"
    r = CliRunner().invoke(cli, ["synth", "gpt", "--layers", "4", "--hidden", "256",
                                 "--heads", "8", "--vocab", "1024", "--seq", str(seq),
                                 "--batch", "2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    return str(out)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("bad")
    return {"gpt": _synth(tmp, "gpt", 64), "noseq": _synth(tmp, "noseq", 1)}


CASES = {
    "reserve everything": ("gpt", ["--memory-reserve", "100%"], "--memory-reserve"),
    "reserve more than the device": ("gpt", ["--memory-reserve", "200GB"], "--memory-reserve"),
    "negative reserve": ("gpt", ["--memory-reserve", "-5%"], "--memory-reserve"),
    "sp without a sequence": ("noseq", ["--pin", "sp=on"], "sp=on"),
    "v does not divide the layers": ("gpt", ["--pin", "v=3"], "v=3"),
    "v times pp does not divide": ("gpt", ["--pin", "v=2,pp=4"], "v=2"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_line_error_exit_2_nothing_written(models, tmp_path: Path, case: str) -> None:
    model, flags, names = CASES[case]
    out = tmp_path / "plan"
    r = CliRunner().invoke(cli, ["compile", models[model], "--topology", TOPO, "--mode",
                                 "training", "--global-batch", "16", "-o", str(out), *flags])
    err = r.stderr.strip()
    assert r.exit_code == 2, (case, r.output, err)
    assert len(err.splitlines()) == 1 and names in err, (case, err)
    assert "Traceback" not in r.output + err
    assert not out.exists()
