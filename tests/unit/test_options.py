"""The compile options are declared once (:data:`shardc.vocabulary.OPTIONS`) and every
interface reads that one table: ``shardc compile``'s flags, :func:`shardc.compile`'s
keywords, :class:`PlanOptions` and plan.json's ``options``, the partitioner's defaults.
"""

from __future__ import annotations

import dataclasses
import inspect

import click
import pytest

import shardc
from shardc.build import PlanOptions as ReExported
from shardc.cli.compile import compile_cmd
from shardc.errors import OptionError
from shardc.options import PlanOptions
from shardc.partition.options import PartitionOptions
from shardc.vocabulary import OPTIONS


def test_plan_options_are_the_table() -> None:
    assert ReExported is PlanOptions
    fields = {f.name: f.default for f in dataclasses.fields(PlanOptions)}
    assert fields == {name: o.default for name, o in OPTIONS.items()}


def test_the_cli_offers_every_option_with_the_tables_default_and_help() -> None:
    params = {p.name: p for p in compile_cmd.params if isinstance(p, click.Option)}
    for name, o in OPTIONS.items():
        flag = params[name]
        assert o.flag in flag.opts
        assert flag.help == o.help
        if o.default is not None and name != "pins":
            assert flag.default == o.default, name
        if o.choices:
            assert isinstance(flag.type, click.Choice)
            assert tuple(flag.type.choices) == o.choices


def test_the_api_defaults_are_the_tables() -> None:
    sig = inspect.signature(shardc.compile).parameters
    for name, o in OPTIONS.items():
        # pins and warm_start take richer values in Python (a mapping, a Plan); None is "none"
        expected = None if name in ("pins", "warm_start") else o.default
        assert sig[name].default == expected, name


def test_the_partitioners_defaults_are_the_tables() -> None:
    part = {f.name: f.default for f in dataclasses.fields(PartitionOptions)}
    for name in ("objective", "microbatches", "global_batch", "schedule", "zero", "seed",
                 "max_stages", "time_limit"):
        assert part[name] == OPTIONS[name].default, name


def test_plan_json_records_every_recorded_option() -> None:
    opts = PlanOptions(pins=("tp=2",))
    record = opts.to_json(opts.partition_options())
    assert set(record) == {n for n, o in OPTIONS.items() if o.recorded and not o.sparse}
    assert record["pins"] == {"tp": 2}


def test_a_sparse_option_is_recorded_only_when_set() -> None:
    """``cp_comm`` at its default leaves plan.json as it was before the option existed;
    set, it is recorded, and a replay of the plan runs with it again.
    """
    assert OPTIONS["cp_comm"].sparse
    ring = PlanOptions(pins=("cp=2",), cp_comm="ring")
    record = ring.to_json(ring.partition_options())
    assert record["cp_comm"] == "ring" and ring.partition_options().cp_comm == "ring"
    part = {"pp": 1, "dp": 1, "stages": [{"index": 0, "kind": "cpu", "tp": 1,
                                          "blocks": [0, 1], "recompute": "none"}]}
    assert PlanOptions.replaying({"options": record, "partition": part}).cp_comm == "ring"
    plain = {k: v for k, v in record.items() if k != "cp_comm"}
    assert PlanOptions.replaying({"options": plain, "partition": part}).cp_comm == "allgather"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "decode"}, "unknown mode 'decode'"),
        ({"objective": "cost"}, "unknown objective 'cost'"),
        ({"schedule": "zb"}, "unknown schedule 'zb'"),
        ({"zero": 4}, "--zero 4: use 0, 1, 2 or 3"),
        ({"microbatches": 0}, "--microbatches must be at least 1, got 0"),
        ({"max_stages": 0}, "--max-stages must be at least 1, got 0"),
        ({"time_limit": 0.0}, "--time-limit must be positive, got 0.0"),
        ({"recompute": "some"}, "unknown recompute 'some'"),
        ({"cp_comm": "tree"}, "unknown cp_comm 'tree'"),
    ],
)
def test_one_check_for_the_cli_and_the_api(values: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        PlanOptions(**values)  # type: ignore[arg-type]
    if set(values) <= {f.name for f in dataclasses.fields(PartitionOptions)}:
        with pytest.raises(OptionError, match=message):
            PartitionOptions(**values)  # type: ignore[arg-type]


def test_replaying_a_plan_from_before_dtype_and_the_reserve() -> None:
    opts = PlanOptions(pins=("tp=1,pp=1,dp=1",))
    record = opts.to_json(opts.partition_options())
    del record["dtype"], record["memory_reserve"]
    part = {"pp": 1, "dp": 1, "stages": [
        {"index": 0, "kind": "cpu", "tp": 1, "blocks": [0, 0], "recompute": "none"}]}
    again = PlanOptions.replaying({"options": record, "partition": part})
    assert again.dtype is None and again.memory_reserve == "0"
    assert again.pins[0] == "pp=1,dp=1"
