"""Property tests: random valid topologies round-trip; mutated ones fail where they should.

The mutations are the ones users make: a deleted token, a wrong unit, a duplicated name.
Each must raise a TopologyError located exactly where the damage is; any other exception
(a traceback) fails the test.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from topo_gen import Model, models, render

from shardc.errors import ShardcError, TopologyError
from shardc.topology import load_topology
from shardc.topology.parser import lark_parser

SETTINGS = settings(max_examples=int(__import__("os").environ.get("TOPO_EXAMPLES", 40)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _tokens(text: str) -> list:
    return list(lark_parser().lex(text))


def _delete(text: str, token) -> str:
    """Remove a token and the spaces after it, so the next token moves into its place."""
    end = token.end_pos
    while end < len(text) and text[end] in " \t":
        end += 1
    return text[: token.start_pos] + text[end:]


def _error(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load_topology(text)
    return info.value


@SETTINGS
@given(models())
def test_generated_topologies_parse_and_round_trip(m: Model) -> None:
    topo = load_topology(render(m, 0))
    assert len(topo.devices) == m.device_count
    again = load_topology(topo.to_dsl())
    assert again == topo
    assert again.to_json() == topo.to_json()


@SETTINGS
@given(models())
def test_two_spellings_of_one_cluster_are_equal(m: Model) -> None:
    # ranges vs one block per instance, GB/s vs Gb/s, ns vs us, TFLOPS vs PFLOPS,
    # literals vs parameters, kinds before vs after use
    assert load_topology(render(m, 0)) == load_topology(render(m, 1))


def _deletable(tokens: list) -> list[tuple[object, tuple[int, int]]]:
    """Tokens whose deletion must be an error, each with the (line, col) to report."""
    out = []
    opens = []
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i else None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.value == "{":
            opens.append(tok)
        if tok.type == "UNIT":
            out.append((tok, (prev.line, prev.column)))  # a quantity without its unit
        elif tok.type == "NUMBER" and nxt is not None and nxt.type == "UNIT":
            out.append((tok, (tok.line, tok.column)))  # a unit with no number
        elif tok.value == "}":
            opener = opens.pop()
            out.append((tok, (opener.line, opener.column)))  # the block left open
        elif tok.value in ("=", "{") or (tok.value in (":", "]") and _in_declaration(tokens, i)):
            out.append((tok, (tok.line, tok.column)))
    return out


def _in_declaration(tokens: list, i: int) -> bool:
    """':' or ']' of 'd0[0..1]: k0' or 'g0[0..2] {' (not of a pattern or fabric header)."""
    if tokens[i].value == ":":
        return tokens[i - 1].value == "]"
    return i + 1 < len(tokens) and tokens[i + 1].value in (":", "{")


@SETTINGS
@given(models(), st.data())
def test_a_deleted_token_is_reported_where_it_was(m: Model, data) -> None:
    text = render(m, 0)
    token, (line, column) = data.draw(st.sampled_from(_deletable(_tokens(text))))
    err = _error(_delete(text, token))
    assert (err.line, err.column) == (line, column), (token, err.render())
    assert err.context and "^" in err.context


_SWAPS = {"/s": "GB", "TFLOPS": "GB/s", "GB": "GB/s", "ns": "GB"}


@SETTINGS
@given(models(), st.data())
def test_a_wrong_unit_is_reported_at_the_unit(m: Model, data) -> None:
    text = render(m, 0)
    units = [t for t in _tokens(text) if t.type == "UNIT"]
    token = data.draw(st.sampled_from(units))
    wrong = next(v for k, v in _SWAPS.items() if token.value.endswith(k))
    err = _error(text[: token.start_pos] + wrong + text[token.end_pos:])
    assert (err.line, err.column) == (token.line, token.column), err.render()
    assert "needs a" in err.message and err.hint


@SETTINGS
@given(models(), st.data())
def test_a_duplicated_name_is_reported_at_the_copy(m: Model, data) -> None:
    lines = render(m, 0).split("\n")
    # a device declaration line, or a whole kind block
    device_lines = [i for i, s in enumerate(lines) if "]: k" in s]
    kind_starts = [i for i, s in enumerate(lines) if s.startswith("kind ")]
    choice = data.draw(st.sampled_from([("dev", i) for i in device_lines]
                                       + [("kind", i) for i in kind_starts]))
    what, i = choice
    if what == "dev":
        mutated = [*lines[: i + 1], lines[i], *lines[i + 1:]]
        expected = (i + 2, 5)
    else:
        end = lines.index("}", i)
        block = lines[i: end + 1]
        mutated = [*lines[: end + 1], *block, *lines[end + 1:]]
        expected = (end + 2, 6)
    err = _error("\n".join(mutated))
    assert (err.line, err.column) == expected, err.render()
    assert "duplicate" in err.message or "twice" in err.message or "overlaps" in err.message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models(), st.data())
def test_any_single_token_deletion_never_crashes(m: Model, data) -> None:
    text = render(m, 0)
    tokens = _tokens(text)
    token = data.draw(st.sampled_from(tokens))
    # an error is expected most of the time; a traceback never is
    with contextlib.suppress(ShardcError):
        load_topology(_delete(text, token))
