"""The parts of shardc.train that need no process world: reading the plan, mapping ops to
modules, refusing what does not fit, launch commands, exported configs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import pytest
import torch
import torch.distributed as dist
import train_harness as H
from click.testing import CliRunner

import shardc
from shardc.cli.main import cli
from shardc.train import TrainPlanError, plan_view
from shardc.train.conv1d import CONV1D, split_factor
from shardc.train.export import export_config, megatron_args, torchtitan_config
from shardc.train.launch import check_placement, torchrun_commands
from shardc.train.modules import check_model, layer_chain, model_map, tp_targets
from shardc.train.parallel import apply
from shardc.train.tensor_parallel import check_whole_siblings

LOCAL = "topologies/localhost.topo"


@pytest.fixture(scope="module")
def plans(exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("train_plans")
    llama = str(exports["llama"])
    out = {}
    for name, topo, kw in (
        ("tp2pp2", LOCAL, {"devices": 4, "pins": "tp=2,pp=2,sp=on"}),
        ("tp4", LOCAL, {"devices": 4, "pins": "tp=4"}),
        ("uneven", LOCAL, {"devices": 4, "pins": "pp=2,dp=2,stage0.blocks=1", "zero": 3,
                           "recompute": "full"}),
        ("pair", "examples/h200_pair.topo", {"pins": "tp=8,dp=2"}),
        ("dgx", "topologies/dgx_h100.topo", {"pins": "tp=2,dp=1,pp=1"}),
    ):  # fmt: skip
        shardc.compile(llama, topo, microbatches=2, quiet=True, **kw).save(d / name)
        out[name] = d / name
    return out


def test_view_reads_placement_and_stages(plans: dict[str, Path]) -> None:
    v = plan_view(plans["tp2pp2"])
    assert (v.pp, v.dp, v.uniform_tp, v.microbatches, v.schedule) == (2, 1, 2, 2, "1f1b")
    assert [s.blocks for s in v.stages] == [(0, 0), (1, 1)]
    assert [(r.stage, r.tp_rank) for r in v.ranks] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert v.strategies["node_linear_3"] == "row" and v.onnx_model() is not None


def test_refuses_an_inference_plan(tmp_path: Path) -> None:
    plan = shardc.compile("examples/models/tiny_gpt2.onnx", LOCAL, devices=2, mode="inference",
                          quiet=True)  # fmt: skip
    with pytest.raises(TrainPlanError, match="--mode inference"):
        plan_view(plan)


def test_refuses_a_context_parallel_plan(exports: dict[str, Path]) -> None:
    plan = shardc.compile(str(exports["llama"]), LOCAL, devices=2, pins="tp=1,pp=1,dp=1,cp=2",
                          quiet=True)  # fmt: skip
    with pytest.raises(TrainPlanError, match="context parallelism"):
        plan_view(plan)


def test_strategies_map_to_modules_through_metadata(exports: dict[str, Path]) -> None:
    mm = model_map(onnx.load(str(exports["llama"]), load_external_data=False))
    chain = layer_chain(mm, 2)
    assert chain.layers == ("inner.model.layers.0", "inner.model.layers.1")
    assert chain.before == ("inner.model.embed_tokens",)
    assert chain.after == ("inner.model.norm", "inner.lm_head")
    targets = tp_targets(mm, {"node_linear": "column", "node_linear_3": "row",
                              "node_embedding": "vocab", "node_linear_14": "vocab"})  # fmt: skip
    assert {k: s for k, (s, _, _) in targets.items()} == {
        "inner.model.layers.0.self_attn.q_proj": "column",
        "inner.model.layers.0.self_attn.o_proj": "row",
        "inner.model.embed_tokens": "vocab",
        "inner.lm_head": "vocab",
    }
    with pytest.raises(TrainPlanError, match="another model"):
        layer_chain(mm, 3)


def test_refuses_another_model_and_finds_fused_projections(exports: dict[str, Path]) -> None:
    llama = onnx.load(str(exports["llama"]), load_external_data=False)
    check_model(H.build("llama"), llama, model_map(llama))
    with pytest.raises(TrainPlanError, match="another model"):
        check_model(H.build("gpt2"), llama, model_map(llama))
    with pytest.raises(TrainPlanError, match="weight is"):
        check_model(H.build("llama", layers=2).__class__(_wider()), llama, model_map(llama))
    gpt2 = model_map(onnx.load(str(exports["gpt2"]), load_external_data=False))
    node = {sc.module: n for n, sc in gpt2.scopes.items() if sc.cls == CONV1D}
    # the fused q|k|v projection is found by the Split after it, not by its name
    assert split_factor(gpt2.proto, node["inner.transformer.h.0.attn.c_attn"]) == 3
    assert split_factor(gpt2.proto, node["inner.transformer.h.0.mlp.c_fc"]) == 1
    with pytest.raises(TrainPlanError, match="Conv1D modules only"):
        tp_targets(gpt2, {node["inner.transformer.h.0.mlp.c_fc"]: "vocab"})


def test_refuses_more_tp_ranks_than_kv_heads(plans: dict[str, Path]) -> None:
    """tp=4 over 2 KV heads: the plan keeps k_proj whole, which torch cannot express."""
    v = plan_view(plans["tp4"])
    mm = model_map(v.onnx_model())  # type: ignore[arg-type]
    targets = tp_targets(mm, v.strategies)
    assert "inner.model.layers.0.self_attn.k_proj" not in targets
    with pytest.raises(TrainPlanError, match="k_proj stays whole"):
        check_whole_siblings(H.build("llama"), targets)


def _wider() -> torch.nn.Module:
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=H.VOCAB, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2)  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


def test_wrong_world_and_missing_gpu_are_one_line_errors(
    plans: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(TrainPlanError, match="simulate_devices=True"):
        apply(plans["dgx"], H.build("llama"), simulate_devices=False)
    with pytest.raises(TrainPlanError, match="simulate_devices=True"):  # the handle's door
        shardc.Plan.load(plans["dgx"]).apply(H.build("llama"), simulate_devices=False)
    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    try:
        with pytest.raises(TrainPlanError, match="4 ranks and this job has 1") as e:
            apply(plans["tp2pp2"], H.build("llama"))
        assert "\n" not in str(e.value)
    finally:
        dist.destroy_process_group()


def test_launch_commands_follow_the_placement(
    plans: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = torchrun_commands(plan_view(plans["pair"]), ["train.py"])
    assert [n.ranks for n in nodes] == [tuple(range(8)), tuple(range(8, 16))]
    assert nodes[1].visible_devices == "0,1,2,3,4,5,6,7"
    assert "--node-rank=1" in nodes[1].argv and "--nproc-per-node=8" in nodes[1].argv
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("GROUP_RANK", "0")
    with pytest.warns(shardc.ShardcWarning, match="local rank 1"):
        check_placement(plan_view(plans["pair"]), 9)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("GROUP_RANK", "1")
    check_placement(plan_view(plans["pair"]), 9)  # where the plan put it: silent


def test_cli_launch_and_export(plans: dict[str, Path]) -> None:
    r = CliRunner().invoke(cli, ["launch", str(plans["tp2pp2"]), "--print", "--", "t.py", "-x"])
    assert r.exit_code == 0 and "--nproc-per-node=4 t.py -x" in r.output
    r = CliRunner().invoke(cli, ["launch", str(plans["tp2pp2"])])
    assert r.exit_code == 2 and "no script" in r.output
    r = CliRunner().invoke(cli, ["export-config", str(plans["tp2pp2"]), "--format", "megatron"])
    assert r.exit_code == 0
    assert "--tensor-model-parallel-size 2" in r.output and "--sequence-parallel" in r.output


def test_export_states_what_is_lost(plans: dict[str, Path]) -> None:
    even = export_config(plans["tp2pp2"], "torchtitan")
    assert even.lost == () and "tensor_parallel_degree = 2" in even.text
    assert 'module_fqns_per_model_part = [["tok_embeddings", "layers.0"]' in even.text
    meg = export_config(plans["uneven"], "megatron")
    assert "--use-megatron-fsdp --data-parallel-sharding-strategy optim_grads_params" in meg.text
    assert "--recompute-granularity full" in meg.text
    titan = export_config(plans["uneven"], "torchtitan")
    assert 'fsdp_reshard_after_forward = "always"' in titan.text and 'mode = "full"' in titan.text


def test_export_of_uneven_stages_and_mixed_tp(plans: dict[str, Path]) -> None:
    v = plan_view(plans["tp2pp2"])
    a, b = v.stages
    v = dataclasses.replace(
        v, blocks=3, stages=(dataclasses.replace(a, blocks=(0, 1)),
                             dataclasses.replace(b, blocks=(2, 2), tp=1))
    )  # fmt: skip
    meg = megatron_args(v, 4)
    assert "--pipeline-model-parallel-layout Ett|tL" in meg.text
    assert meg.lost == ("per-stage TP degrees [2, 1]: one degree, 2, for all",)
    assert "# not expressed: per-stage TP degrees" in meg.text
    titan = torchtitan_config(v)
    assert (
        '[["tok_embeddings", "layers.0", "layers.1"], ["layers.2", "norm", "output"]]' in titan.text
    )


@pytest.mark.parametrize("name", ["shardc.train.planview", "shardc.train.export"])
def test_docstring_examples(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import doctest
    import importlib

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_hostfile_names_the_hosts_and_checks_slots(plans: dict[str, Path], tmp_path: Path) -> None:
    good, bad = tmp_path / "hosts", tmp_path / "bad"
    good.write_text("# two servers\nhgx-a slots=8\nhgx-b slots=8\n")
    bad.write_text("hgx-a slots=4\nhgx-b\n")
    r = CliRunner().invoke(cli, ["launch", str(plans["pair"]), "--hostfile", str(good), "--",
                                 "t.py"])  # fmt: skip
    assert r.exit_code == 0 and r.output.count("ssh hgx-") == 2
    assert "ssh hgx-b" in r.output and "--node-rank=1 --master-addr=hgx-a" in r.output
    r = CliRunner().invoke(cli, ["launch", str(plans["pair"]), "--hostfile", str(bad), "--",
                                 "t.py"])  # fmt: skip
    assert r.exit_code == 2 and "slots=4 and the plan runs 8 ranks" in r.output


def test_refuses_stages_of_different_tp_before_joining_a_world() -> None:
    """A pipeline stage pairs one rank with one of the next stage: tp 2 then 1 is
    refused from the plan alone (no process group needed), naming both degrees.
    """
    plan = shardc.compile("examples/models/tiny_gpt2.onnx", LOCAL, devices=3, quiet=True,
                          pins="pp=2,dp=1,stage0.tp=2,stage1.tp=1")  # fmt: skip
    with pytest.raises(TrainPlanError, match=r"stage0 tp=2, stage1 tp=1") as e:
        apply(plan, H.build("gpt2"))
    assert "\n" not in str(e.value)
