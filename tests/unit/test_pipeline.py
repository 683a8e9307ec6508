"""The pass contract: declared requirements, provisions, failure attribution, dumps."""

from __future__ import annotations

import pytest
from conftest import parse

from shardc.errors import PipelineError, ShardcError
from shardc.frontend import load_model
from shardc.passes import annotate_costs
from shardc.pipeline import CompileState, Pass, Pipeline


@pytest.fixture
def state() -> CompileState:
    m = load_model(
        parse(
            '<ir_version: 8, opset_import: ["" : 18]>\n'
            "g (float[2,4] X) => (float[2,4] Y) { Y = Relu(X) }"
        )
    )
    return CompileState(m, m.graph)


def _noop(name: str, **kw) -> Pass:
    return Pass(name=name, run=lambda s: s, **kw)


def test_order_is_checked_before_running() -> None:
    with pytest.raises(PipelineError, match="requires \\['costs'\\]"):
        Pipeline([_noop("needs_costs", requires=("costs",)), annotate_costs.PASS])
    Pipeline([annotate_costs.PASS, _noop("needs_costs", requires=("costs",))])


def test_unknown_fields_and_duplicate_names_are_refused() -> None:
    with pytest.raises(PipelineError, match="unknown state fields"):
        _noop("x", provides=("nonsense",))
    with pytest.raises(PipelineError, match="duplicate"):
        Pipeline([_noop("a"), _noop("a")])


def test_a_pass_that_does_not_provide_is_caught(state: CompileState) -> None:
    liar = Pass(name="liar", run=lambda s: s, provides=("costs",))
    with pytest.raises(PipelineError, match="did not provide"):
        Pipeline([liar]).run(state)


def test_failure_names_the_pass_and_those_before_it(state: CompileState) -> None:
    def boom(s: CompileState) -> CompileState:
        raise ValueError("kaput")

    with pytest.raises(PipelineError, match=r"pass 'boom' failed after \['annotate_costs'\]"):
        Pipeline([annotate_costs.PASS, Pass(name="boom", run=boom)]).run(state)


def test_verification_after_each_pass_names_the_culprit(state: CompileState) -> None:
    def corrupt(s: CompileState) -> CompileState:
        return s.with_(graph=s.graph.replace(outputs=("nowhere",)))

    with pytest.raises(PipelineError, match="after pass 'corrupt'"):
        Pipeline([Pass(name="corrupt", run=corrupt)]).run(state, verify=True)


def test_timings_progress_and_dumps(state: CompileState) -> None:
    seen = []
    result = Pipeline([annotate_costs.PASS]).run(
        state, dump_after=["annotate_costs"], on_pass=lambda n, i, t: seen.append((n, i, t))
    )
    assert seen == [("annotate_costs", 0, 1)]
    assert [t.name for t in result.timings] == ["annotate_costs"]
    assert "flops=8" in result.dumps["annotate_costs"]
    with pytest.raises(ShardcError, match="no such pass"):
        Pipeline([annotate_costs.PASS]).run(state, dump_after=["coarsen"])
