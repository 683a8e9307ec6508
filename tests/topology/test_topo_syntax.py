"""The grammar, the AST and its positions, and the syntax error messages."""

from __future__ import annotations

from fractions import Fraction

import pytest
from lark.exceptions import UnexpectedInput

from shardc.errors import TopologyError
from shardc.topology import parse
from shardc.topology import syntax as ast
from shardc.topology.parser import lark_parser
from shardc.topology.syntax_errors import _EXAMPLES, _classify
from shardc.topology.units import UNITS


def test_statements_positions_and_values() -> None:
    module = parse(
        "let nodes = 4  # comment\n"
        "kind a extends b { compute bf16, fp16 312 TFLOPS; tag role prefill }\n"
        "node[0..nodes-1] {\n"
        "    gpu[0..7]: a\n"
        "    switch nv: nvlink { members gpu[*]; bandwidth 450 GB/s; latency 1 us }\n"
        "}\n"
        'include "x.topo"\n'
        "link node[0].gpu[0] <-> node[1].*: pcie\n",
        file="f.topo",
    )
    let, kind, group, inc, link = module.stmts
    assert isinstance(let, ast.Let) and let.name == "nodes"
    assert let.value.expr == ast.Number(Fraction(4), let.value.expr.pos)
    assert (let.name_pos.line, let.name_pos.column) == (1, 5)
    assert isinstance(kind, ast.KindDef) and (kind.name, kind.base) == ("a", "b")
    compute = kind.body[0]
    assert isinstance(compute, ast.Prop) and compute.name == "compute"
    assert [v.unit for v in compute.values] == [None, None, "TFLOPS"]
    assert isinstance(group, ast.GroupDecl) and group.name == "node"
    rng = group.selector[0]
    assert isinstance(rng, ast.SelRange) and isinstance(rng.hi, ast.BinOp)
    device, fabric = group.body
    assert isinstance(device, ast.DeviceDecl) and device.kind == "a"
    assert (device.kind_pos.line, device.kind_pos.column) == (4, 16)
    assert isinstance(fabric, ast.FabricStmt) and (fabric.fabric, fabric.link_kind) == (
        "switch", "nvlink")
    assert isinstance(inc, ast.Include) and inc.path == "x.topo"
    assert isinstance(link, ast.LinkStmt) and link.body == ()
    assert link.b.segments[1].name is None  # the wildcard segment
    assert link.pos.file == "f.topo"


def test_separators_blank_lines_and_comments_anywhere() -> None:
    text = "# head\n\n; ;\nkind a {   # c\n\n  tag x ; tag y\n\n}\n# tail"
    (kind,) = parse(text).stmts
    assert [p.name for p in kind.body] == ["tag", "tag"]
    assert parse("").stmts == ()


def test_every_unit_lexes_as_a_unit() -> None:
    # the UNIT terminal in grammar.lark must list exactly the units in units.UNITS
    for unit in UNITS:
        (prop,) = parse(f"x 3 {unit}\n").stmts
        assert prop.values[0].unit == unit, unit


def test_case_matters_for_units() -> None:
    (prop,) = parse("bandwidth 3 gb/s\n").stmts
    assert prop.values[0].unit is None  # 'gb/s' is not a unit; the checker says so


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("gpu[0..7] a100\n", 1, 11, "needs ': KIND'"),
        ("x {\n  y {\n    gpu[0..7] a\n  }\n}\n", 3, 15, "needs ': KIND'"),
        ("gpu[0..7]:\n", 1, 11, "kind name after ':'"),
        ("let x 4\n", 1, 7, "'let' needs"),
        ("kind a100\n", 1, 10, "a kind needs"),
        ("memory = 80 GB\n", 1, 8, "without '='"),
        ("link a b: x\n", 1, 8, "a link is written"),
        ("switch s {\n}\n", 1, 10, "a fabric is written"),
        ("x: a-b\n", 1, 5, "may not contain '-'"),
        ("let x = @\n", 1, 9, "unexpected character"),
        ("80 GB\n", 1, 1, "cannot start here"),
        ("}\n", 1, 1, "without a matching"),
        ("let x = (3\n", 1, 11, "incomplete expression"),
    ],
)
def test_syntax_errors_are_located_and_explained(text, line, column, fragment) -> None:
    with pytest.raises(TopologyError) as info:
        parse(text, file="t.topo")
    err = info.value
    assert (err.file, err.line, err.column) == ("t.topo", line, column), err.render()
    assert fragment in err.message
    lines = err.context.split("\n")
    assert len(lines) == 2 and lines[1].rstrip().endswith("^")
    assert lines[1].index("^") == lines[0].index("| ") + 2 + column - 1


def test_a_missing_close_brace_points_at_the_open_one() -> None:
    text = (
        "node[0..3] {\n"
        "    gpu[0..7]: a\n"
        "    switch s: nvlink {\n"
        "        members gpu[*]\n"
        "\n"  # the switch's '}' is missing
        "}\n"
        "kind a { tag role host }\n"
    )
    with pytest.raises(TopologyError) as info:
        parse(text)
    assert (info.value.line, info.value.column) == (3, 22)
    assert "never closed" in info.value.message


def test_a_missing_open_brace_points_at_its_line() -> None:
    text = "network n: ib\n    members x[*]\n}\n"
    with pytest.raises(TopologyError) as info:
        parse(text)
    assert (info.value.line, info.value.column) == (1, 15)
    assert "has no '{'" in info.value.message


def test_braces_in_comments_and_strings_do_not_count() -> None:
    parse('# { {\nkind a { tag note "{" }\n')


def test_every_example_classifies_as_itself() -> None:
    parser = lark_parser()
    for message, _hint, examples in _EXAMPLES:
        for example in examples:
            try:
                parser.parse(example)
            except UnexpectedInput as exc:
                assert _classify(exc, parser)[0] == message, example
            else:
                pytest.fail(f"example parses: {example!r}")


def test_the_tour_in_the_package_docstring_is_valid() -> None:
    import shardc.topology as package
    from shardc.topology import load_topology

    doc = package.__doc__
    tour = doc[doc.index("::") + 2 : doc.index("Statements end")]
    text = "\n".join(line[4:] for line in tour.split("\n")).replace("include", "# include")
    topo = load_topology(text + "\n")
    assert len(topo.devices) == 256 and set(topo.planes) == {"nvlink", "ib", "pcie"}
