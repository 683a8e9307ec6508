"""Where includes and topology names come from: the including file, the search path, stock.

The search path is ``include_path`` (``--include-path``), then ``$SHARDC_TOPOLOGY_PATH``,
then the stock folder. Text has no folder of its own, and a file that is not a ``.topo``
file is never read through an include nor echoed in an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import shardc
from shardc.cli.main import cli
from shardc.errors import TopologyError
from shardc.topology import load_topology
from shardc.topology.loader import ENV_VAR, find_topology, stock_dir, stock_topologies

KIND = "kind a { compute fp32 1 TFLOPS; memory 1 GB; memory_bandwidth 1 TB/s }\n"
BODY = "gpu[0..1]: a\nswitch s: nvlink { members gpu[*]; bandwidth 1 GB/s; latency 1 us }\n"
SECRET = "root:x:0:0:root:/root:/bin/bash\n"


def test_text_includes_never_come_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(SECRET)
    (tmp_path / "etc" / "kinds.topo").write_text(KIND)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    for path in ("etc/passwd", "etc/kinds.topo"):
        with pytest.raises(TopologyError) as info:
            load_topology(f'include "{path}"\n' + BODY)
        assert "root:" not in str(info.value) + (info.value.context or "")
    # the caller may name a folder; stock kinds need none
    assert len(load_topology('include "etc/kinds.topo"\n' + BODY, include_path=".").devices) == 2
    text = 'include "kinds/nvidia.topo"\n' + BODY.replace(": a\n", ": h100_sxm\n")
    assert load_topology(text).devices[0].kind.name == "h100_sxm"


def test_files_that_are_not_topologies_are_never_shown(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text(SECRET)
    main = tmp_path / "main.topo"
    main.write_text('include "passwd"\n' + KIND + BODY)
    with pytest.raises(TopologyError, match=r"includes name \.topo files") as info:
        load_topology(main)
    assert "root:" not in str(info.value) + (info.value.context or "")
    with pytest.raises(TopologyError, match="text is not shown") as info:
        load_topology(tmp_path / "passwd")
    assert info.value.context is None and "root:" not in str(info.value)


def test_include_order_file_then_include_path_then_env_then_stock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib, env_lib, top = tmp_path / "lib", tmp_path / "env", tmp_path / "top"
    for folder in (lib, env_lib, top):
        folder.mkdir()
    (lib / "k.topo").write_text(KIND)
    (env_lib / "k.topo").write_text(KIND.replace("1 GB", "2 GB"))  # tells the copies apart
    main = top / "main.topo"
    main.write_text('include "k.topo"\n' + BODY)

    def memory(**kw: object) -> float | None:
        return load_topology(main, **kw).device("gpu0").kind.memory_bytes  # type: ignore[arg-type]

    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(TopologyError, match="not found next to the file") as info:
        load_topology(main)
    assert "--include-path" in (info.value.hint or "")
    assert memory(include_path=[lib]) == 1e9
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(env_lib), str(tmp_path / "gone")]))
    assert memory() == 2e9  # from the environment
    assert memory(include_path=[lib]) == 1e9  # include_path first
    (top / "k.topo").write_text(KIND.replace("1 GB", "3 GB"))
    assert memory(include_path=[lib]) == 3e9  # the file's own folder first


def test_topologies_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    names = [s.name for s in stock_topologies()]
    assert names == sorted(p.stem for p in stock_dir().glob("*.topo"))
    assert "cloudmatrix384" in names
    topo = shardc.load_topology("gb200_nvl72")
    assert len(topo.compute_devices) == 72 and topo.source == str(stock_dir() / "gb200_nvl72.topo")
    assert find_topology("localhost.topo") == stock_dir() / "localhost.topo"
    with pytest.raises(TopologyError, match="no topology named 'nope'") as info:
        load_topology("nope")
    assert "cloudmatrix384" in (info.value.hint or "")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "localhost.topo").write_text(KIND + BODY)
    assert len(load_topology("localhost", include_path=[mine]).devices) == 2  # shadows stock


def test_topo_list_and_show_json(tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["topo", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    entries = {e["name"]: e for e in json.loads(listed.output)["topologies"]}
    assert entries["cloudmatrix384"]["devices"] == 576
    assert entries["cloudmatrix384"]["compute_devices"] == 384
    assert entries["gb200_nvl72"]["description"].startswith("NVIDIA GB200 NVL72")
    table = runner.invoke(cli, ["topo", "list"])
    assert table.exit_code == 0 and "gb200_nvl72" in table.output
    shown = runner.invoke(cli, ["topo", "show", "dgx_h100", "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["devices"] == 8 and data["hierarchy"][0]["count"] == 8
    (tmp_path / "k.topo").write_text(KIND)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.topo").write_text('include "k.topo"\n' + BODY)
    bad = runner.invoke(cli, ["topo", "check", str(tmp_path / "sub" / "m.topo")])
    assert bad.exit_code == 2 and "--include-path" in bad.output
    ok = runner.invoke(cli, ["topo", "check", str(tmp_path / "sub" / "m.topo"),
                             "--include-path", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
