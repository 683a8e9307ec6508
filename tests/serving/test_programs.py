"""Serving programs: per-rank prefill and decode-step programs with the KV cache explicit.

Each test builds a phase pair (a ``shardc synth --cache`` model, or a tiny Hugging Face
Llama exported with its cache), compiles both phases under a tensor-parallel degree, and
runs a prefill plus decode steps sharded, each rank's cache fed back to its next step,
against onnxruntime on the original graphs (fp32 tolerance 1e-5 of the largest logit).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.emit.outdir import write_outdir
from shardc.runtime.serving_verify import verify_serving
from shardc.serving import from_onnx
from shardc.serving_build import phase_pair, program_files
from shardc.synth import SynthConfig, build, build_phases, save
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
TOPO = ROOT / "topologies" / "localhost.topo"
BASE: dict[str, Any] = dict(layers=2, hidden=64, heads=4, vocab=128, seq=6, batch=2,
                            dtype="fp32")
SIZES: dict[str, dict[str, Any]] = {
    "llama": dict(kv_heads=2, ffn=96),
    "moe": dict(kv_heads=2, ffn=32, experts=4, top_k=2, capacity_factor=2.0),
    "deepseek": dict(ffn=32, experts=4, top_k=2, dense_layers=1, dense_ffn=96, q_lora_rank=16,
                     kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16,
                     shared_experts=1, capacity_factor=2.0, expert_groups=2, route_groups=1),
    "gpt": {},
}
CONTEXT = 12


def _pair(tmp: Path, arch: str) -> Path:
    cfg = SynthConfig(**BASE, **SIZES[arch])
    prefill, decode = build_phases(arch, cfg, "m.decode.onnx", context=CONTEXT,
                                   with_weights=True)
    save(decode, tmp / "m.decode.onnx")
    save(prefill, tmp / "m.onnx")
    return tmp / "m.onnx"


def _programs(model: Path, out: Path, tp_prefill: int, tp_decode: int) -> dict[str, Any]:
    pair = phase_pair(model)
    assert pair is not None
    serving = {"instances": [
        {"role": "prefill", "tp": tp_prefill, "pp": 1, "ep": tp_prefill, "kind": "cpu_share"},
        {"role": "decode", "tp": tp_decode, "pp": 1, "ep": tp_decode, "kind": "cpu_share"}]}
    topology = load_topology(TOPO, {"devices": 4})
    write_outdir(out / "programs", program_files(pair, topology, {"path": str(TOPO)}, serving))
    index: dict[str, Any] = json.loads((out / "programs" / "programs.json").read_text())
    return index


def _inputs(path: Path) -> dict[str, list[int]]:
    m = onnx.load(str(path), load_external_data=False)
    return {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}


@pytest.mark.parametrize("arch", ["llama", "moe", "deepseek", "gpt"])
def test_synth_phases_generate_what_the_full_model_computes(tmp_path: Path, arch: str) -> None:
    """Prefill then 4 cached decode steps give the logits the uncached graph gives for
    the whole sequence: the cache graphs are the same model.
    """
    model = _pair(tmp_path, arch)
    pre = ort.InferenceSession(str(model))
    dec = ort.InferenceSession(str(tmp_path / "m.decode.onnx"))
    full = ort.InferenceSession(build(arch, SynthConfig(**{**BASE, **SIZES[arch], "seq": 10}),
                                      with_weights=True).SerializeToString())
    ids = np.random.default_rng(0).integers(0, 128, (2, 6))
    cache = dict(zip([o.name for o in pre.get_outputs()], pre.run(None, {"input_ids": ids}),
                     strict=True))
    seq = ids
    for k in range(4):
        token = cache["logits"][:, -1:].argmax(-1)
        seq = np.concatenate([seq, token], 1)
        feeds = {"input_ids": token, "cache_position": np.array([6 + k])}
        feeds |= {i.name: cache[i.name.replace("past_key_values", "present")]
                  for i in dec.get_inputs()[2:]}
        cache = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, feeds), strict=True))
    want = full.run(None, {"input_ids": seq})[0][:, -1]
    assert np.abs(cache["logits"][:, 0] - want).max() <= 1e-5 * np.abs(want).max()


def test_group_limited_routing_keeps_a_tokens_experts_in_its_best_groups() -> None:
    """DeepSeek-V3's node-limited routing: with 4 groups of 2 experts and 1 group per token,
    each token's top-2 experts share a group; with every group allowed, the router is the
    ungrouped one (same experts, same logits).
    """
    from onnx import TensorProto, helper

    cfg = {**BASE, **SIZES["deepseek"], "experts": 8, "capacity_factor": 4.0}
    ids = np.random.default_rng(0).integers(0, 128, (2, 6))

    def run(groups: int | None, route: int) -> tuple[np.ndarray, np.ndarray]:
        m = build("deepseek", SynthConfig(**{**cfg, "expert_groups": groups,
                                             "route_groups": route}), with_weights=True)
        m.graph.output.append(helper.make_tensor_value_info(
            "layers.1.moe.topk.indices", TensorProto.INT64, None))
        logits, chosen = ort.InferenceSession(m.SerializeToString()).run(
            None, {"input_ids": ids})
        return logits, chosen

    free_logits, free = run(None, 4)
    _, limited = run(4, 1)
    all_logits, every = run(4, 4)
    assert max(len(set(r)) for r in (free // 2).reshape(-1, 2)) == 2  # free routing spans 2
    assert all(len(set(r)) == 1 for r in (limited // 2).reshape(-1, 2))
    assert (every == free).all() and np.array_equal(all_logits, free_logits)


def test_llama_tp2_cache_is_each_ranks_heads(tmp_path: Path) -> None:
    """TP=2: each rank's programs read and write half the KV heads, no collective touches
    the cache, and 4 decode steps match onnxruntime on the originals.
    """
    index = _programs(_pair(tmp_path, "llama"), tmp_path / "out", 2, 2)
    assert index["handoff"] == "direct"
    assert all(e["prefill"] == e["decode"] == {"axis": 1, "parts": 2} for e in index["cache"])
    dec = tmp_path / "out" / "programs" / "decode" / "device_1.onnx"
    assert _inputs(dec)["past_key_values.0.key"] == [2, 1, CONTEXT, 16]  # 2 KV heads / 2
    comm_reads = {n.input[0] for n in onnx.load(str(dec)).graph.node if n.domain == "shardc"}
    assert not any("past_key_values" in v or "present" in v for v in comm_reads)
    report = verify_serving(tmp_path / "out", steps=4)
    assert report.ok and len(report.steps) == 5, report.lines()


def test_moe_tp2_runs_its_experts_expert_parallel(tmp_path: Path) -> None:
    """TP=2 on a synth MoE: each rank stores 2 of the 4 experts whole (EP=2) in both
    phases, and prefill + 4 decode steps match.
    """
    index = _programs(_pair(tmp_path, "moe"), tmp_path / "out", 2, 2)
    for phase in ("prefill", "decode"):
        m = onnx.load(str(tmp_path / "out" / "programs" / phase / "device_0.onnx"))
        experts = [list(t.dims) for t in m.graph.initializer if ".experts." in t.name]
        assert experts and all(d[0] == 2 for d in experts), experts  # 4 experts / 2 ranks
    assert index["phases"]["decode"]["tp"] == 2
    report = verify_serving(tmp_path / "out", steps=4)
    assert report.ok, report.lines()


def test_moe_ep2_over_gloo_processes(tmp_path: Path) -> None:
    """The same programs, one process per rank over torch.distributed (gloo): each rank
    keeps its cache in its own process from the prefill to the last decode step.
    """
    _programs(_pair(tmp_path, "moe"), tmp_path / "out", 2, 2)
    report = verify_serving(tmp_path / "out", steps=3, procs=True)
    assert report.ok and report.runner.startswith("2 processes"), report.lines()
    assert len(report.steps) == 4


def test_procs_refuse_a_relaid_handoff(tmp_path: Path) -> None:
    from shardc.errors import OptionError

    _programs(_pair(tmp_path, "llama"), tmp_path / "out", 1, 2)
    with pytest.raises(OptionError, match="re-laid"):
        verify_serving(tmp_path / "out", steps=2, procs=True)


def test_mla_latent_cache_stays_whole_on_every_rank(tmp_path: Path) -> None:
    """DeepSeek-shaped MLA under TP=2: the compressed cache has no heads axis, so every
    rank holds it whole; the heads are still split and the generation matches.
    """
    index = _programs(_pair(tmp_path, "deepseek"), tmp_path / "out", 2, 2)
    assert {e["name"] for e in index["cache"]} == {"latent", "rope_key"}
    assert all(e["prefill"] is None and e["decode"] is None for e in index["cache"])
    report = verify_serving(tmp_path / "out", steps=4)
    assert report.ok, report.lines()


def test_programs_are_byte_identical_across_runs(tmp_path: Path) -> None:
    model = _pair(tmp_path, "llama")
    _programs(model, tmp_path / "a", 2, 2)
    _programs(model, tmp_path / "b", 2, 2)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file())
    assert len(files) > 10
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_handoff_to_a_wider_decode_instance_is_relaid(tmp_path: Path) -> None:
    """Prefill TP=1 then decode TP=2: the cache is re-laid (joined, split by heads)."""
    index = _programs(_pair(tmp_path, "llama"), tmp_path / "out", 1, 2)
    assert index["handoff"].startswith("re-laid")
    report = verify_serving(tmp_path / "out", steps=4)
    assert report.ok, report.lines()


def test_swapped_rank_programs_fail_verification(tmp_path: Path) -> None:
    """The check can fail: decode rank 0 running rank 1's program reads the other heads'
    cache, and the logits part ways.
    """
    _programs(_pair(tmp_path, "llama"), tmp_path / "out", 2, 2)
    dec = tmp_path / "out" / "programs" / "decode"
    a, b = dec / "device_0.onnx", dec / "device_1.onnx"
    m0, m1 = onnx.load(str(a)), onnx.load(str(b))
    for m, other in ((m0, m1), (m1, m0)):  # swap the programs, keep each file's rank record
        mine = {p.key: p.value for p in m.metadata_props}
        m.graph.CopyFrom(other.graph)
        for p in m.metadata_props:
            p.value = mine[p.key]
    onnx.save(m0, str(a))
    onnx.save(m1, str(b))
    report = verify_serving(tmp_path / "out", steps=2)
    assert not report.ok
    assert report.steps[0].ok  # the prefill is untouched; decode reads swapped weights


def test_cli_compile_serving_writes_programs_and_verify_checks_them(tmp_path: Path) -> None:
    run = CliRunner().invoke(cli, [
        "synth", "llama", "--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
        "--ffn", "96", "--vocab", "128", "--seq", "8", "--batch", "2", "--dtype", "fp32",
        "--cache", "--context", "16", "--with-weights", "-o", str(tmp_path / "tiny.onnx")])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "tiny.decode.onnx").is_file()
    run = CliRunner().invoke(cli, [
        "compile", str(tmp_path / "tiny.onnx"), "--topology", str(TOPO), "--set", "devices=4",
        "--mode", "serving", "--isl", "8", "--osl", "8", "--concurrency", "4", "--pin", "tp=2",
        "-o", str(tmp_path / "out"), "--quiet"])
    assert run.exit_code == 0, run.output
    assert sorted(p.name for p in (tmp_path / "out" / "programs").iterdir()) == [
        "decode", "prefill", "programs.json"]
    run = CliRunner().invoke(cli, ["verify", str(tmp_path / "out"), "--steps", "5", "--json"])
    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout)
    assert report["ok"] and [s["step"] for s in report["steps"]][-1] == "decode 5"
    run = CliRunner().invoke(cli, ["verify", str(tmp_path / "out"), "--steps", "9"])
    assert run.exit_code == 2 and "--steps 9" in run.output
    run = CliRunner().invoke(cli, ["verify", str(tmp_path / "out" / "programs" / "decode")])
    assert run.exit_code == 2 and "one phase of a serving plan" in run.output


def test_programs_of_declared_weights_are_refused_by_verify(tmp_path: Path) -> None:
    from shardc.errors import OptionError

    prefill, decode = build_phases("llama", SynthConfig(**BASE, **SIZES["llama"]),
                                   "m.decode.onnx", context=CONTEXT)  # weights declared
    save(decode, tmp_path / "m.decode.onnx")
    save(prefill, tmp_path / "m.onnx")
    _programs(tmp_path / "m.onnx", tmp_path / "out", 2, 2)
    with pytest.raises(OptionError, match="weights were declared only"):
        verify_serving(tmp_path / "out")


def test_pipelined_instances_get_no_programs_and_say_why() -> None:
    from shardc.serving_build import refusal

    inst = {"role": "aggregated", "tp": 2, "pp": 1, "ep": 2, "kind": "cpu_share"}
    assert refusal({"instances": [inst]}) is None
    why = refusal({"instances": [{**inst, "pp": 2}]})
    assert why is not None and "prefill instance has 2 pipeline stages" in why


def test_the_decode_graph_is_refused_as_a_serving_model(tmp_path: Path) -> None:
    _pair(tmp_path, "llama")
    run = CliRunner().invoke(cli, [
        "compile", str(tmp_path / "m.decode.onnx"), "--topology", str(TOPO), "--set",
        "devices=2", "--mode", "serving", "--isl", "6", "--osl", "6", "--concurrency", "2",
        "-o", str(tmp_path / "out")])
    assert run.exit_code == 2 and "prefill graph" in run.output


@pytest.fixture(scope="module")
def hf_llama_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Hugging Face Llama (2 layers, 4 heads, 2 KV heads) exported with its cache."""
    sys.path.insert(0, str(ROOT / "tests"))
    import models

    from shardc.frontend.kv_export import export_phases

    folder = tmp_path_factory.mktemp("hf_llama_cache")
    export_phases(models.llama().inner, folder / "m.onnx", batch=2, prompt=6, context=CONTEXT,
                  vocab=256)
    return folder / "m.onnx"


def test_hf_llama_export_with_cache_tp2(hf_llama_pair: Path, tmp_path: Path) -> None:
    """The exported Hugging Face Llama with past key values, TP=2: its cache split by heads
    on both phases, prefill + 4 decode steps match onnxruntime on the export.
    """
    model = tmp_path / "m.onnx"
    for f in hf_llama_pair.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    sizes = from_onnx(model)  # no synth metadata: read from the graph
    assert (sizes.layers, sizes.heads, sizes.kv_heads, sizes.ffn) == (2, 4, 2, 128)
    index = _programs(model, tmp_path / "out", 2, 2)
    assert index["handoff"] == "direct" and len(index["cache"]) == 4
    assert all(e["decode"] == {"axis": 1, "parts": 2} for e in index["cache"])
    report = verify_serving(tmp_path / "out", steps=4)
    assert report.ok and all(s.same_token for s in report.steps), report.lines()


@pytest.mark.slow
def test_hf_gpt2_export_with_cache_tp2(tmp_path: Path) -> None:
    """GPT-2 (fused QKV, learned positions) exported with its cache, TP=2 (opt-in: one
    more pair of exports).
    """
    sys.path.insert(0, str(ROOT / "tests"))
    import models

    from shardc.frontend.kv_export import export_phases

    model = tmp_path / "m.onnx"
    export_phases(models.gpt2().inner, model, batch=2, prompt=6, context=CONTEXT, vocab=256)
    index = _programs(model, tmp_path / "out", 2, 2)
    assert all(e["decode"] == {"axis": 1, "parts": 2} for e in index["cache"])
    report = verify_serving(tmp_path / "out", steps=4)
    assert report.ok, report.lines()
