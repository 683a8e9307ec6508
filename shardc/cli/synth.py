"""``shardc synth``: write the ONNX graph of a GPT, Llama or MoE transformer of any size.

Thin: options become a `SynthConfig`, `shardc.synth.build` and `save` do the work, and
this module only prints. Errors in the options surface as `OptionError` (exit 2, one line).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from shardc.errors import OptionError
from shardc.report.text import markup_safe
from shardc.synth import (
    ARCHS,
    DTYPES,
    SynthConfig,
    active_parameter_count,
    build,
    build_phases,
    flops_per_token,
    graph_parameters,
    parameter_count,
    resolve,
    save,
)


def _size(n: float, unit: str = "B") -> str:
    for prefix in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or prefix == "P":
            return f"{n:.3g} {prefix}{unit}" if prefix else f"{n:.0f} {unit}"
        n /= 1000
    return f"{n} {unit}"  # pragma: no cover


@click.command("synth")
@click.argument("arch", type=click.Choice(ARCHS))
@click.option("--layers", type=int, required=True, help="Transformer blocks.")
@click.option("--hidden", type=int, required=True, help="Model width h.")
@click.option("--heads", type=int, required=True, help="Attention (query) heads.")
@click.option("--kv-heads", type=int, help="KV heads for grouped-query attention (llama, moe).")
@click.option("--ffn", type=int, help="MLP width (per expert for moe). [gpt: 4h; else 8h/3 "
              "rounded up to 256]")
@click.option("--experts", type=int, help="Routed experts (moe [8], deepseek [256]).")
@click.option("--top-k", type=int, help="Experts per token (moe [2], deepseek [8]).")
@click.option("--shared-experts", type=int, help="Always-on shared experts (moe [0], "
              "deepseek [1]).")
@click.option("--capacity-factor", type=float,
              help="Expert capacity = ceil(cf*k*tokens/E); cf >= E/k never drops (moe). [1.0]")
@click.option("--dense-layers", type=int, help="Leading layers with a dense MLP (deepseek). [3]")
@click.option("--dense-ffn", type=int, help="Dense MLP width (deepseek). [18432]")
@click.option("--q-lora-rank", type=int, help="MLA query rank, 0 = full rank (deepseek). [1536]")
@click.option("--kv-lora-rank", type=int, help="MLA latent width cached per token (deepseek). "
              "[512]")
@click.option("--qk-nope-head-dim", type=int, help="MLA per-head key width without RoPE "
              "(deepseek). [128]")
@click.option("--qk-rope-head-dim", type=int, help="MLA shared RoPE key width (deepseek). [64]")
@click.option("--v-head-dim", type=int, help="MLA per-head value width (deepseek). [128]")
@click.option("--route-groups", type=int, help="Node-limited routing: groups a token's experts "
              "may span, recorded for serving plans (deepseek). [4]")
@click.option("--expert-groups", type=int, help="Group-limited routing in the graph: routed "
              "experts in this many groups, a token's top-k taken within its --route-groups "
              "best groups, as DeepSeek-V3 routes (deepseek; V3: 8). [0: off]")
@click.option("--vocab", type=int, help="Vocabulary size. [gpt: 50257; deepseek: 129280; "
              "else 32000]")
@click.option("--seq", type=int, help="Sequence length; symbolic 'seq' if omitted.")
@click.option("--batch", type=int, help="Batch size; symbolic 'batch' if omitted.")
@click.option("--max-positions", type=int, help="Learned positions (gpt). [max(2048, seq)]")
@click.option("--tie-embeddings/--untie-embeddings", default=None,
              help="Share the token embedding with the LM head. [gpt: tied; else untied]")
@click.option("--dtype", type=click.Choice(DTYPES), default="bf16", show_default=True,
              help="Weights and activations; fp8 = float8e4m3fn weights, bf16 activations.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .onnx to write; weights are declared in <stem>.weights.bin beside it.")
@click.option("--with-weights", is_flag=True,
              help="Write seeded random weights (small models) so the model runs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --with-weights.")
@click.option("--cache", is_flag=True,
              help="Serving: write the prefill graph (prompt in, KV cache out) to OUTPUT and "
              "its decode-step graph (token and cache in, logits and cache out) beside it "
              "as STEM.decode.onnx; needs --batch and --seq (the prompt length).")
@click.option("--context", type=int,
              help="Serving (--cache): rows of the KV cache, prompt plus output. [2*seq]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def synth(arch: str, output: Path, with_weights: bool, seed: int, as_json: bool,
          cache: bool, context: int | None, **sizes: Any) -> None:
    """Write the ONNX graph of an ARCH (gpt, llama, moe, deepseek) transformer of any size.

    Weights are external data that is never written (unless --with-weights), so a
    1 T-parameter graph is a few MB and plans from shapes and dtypes alone.
    """
    if not output.parent.is_dir():
        raise OptionError(f"output directory {str(output.parent)!r} does not exist",
                          hint="create it first")
    config = SynthConfig(**sizes)
    res = resolve(arch, config)
    start = time.perf_counter()
    decode_path = output.with_name(f"{output.name.removesuffix('.onnx')}.decode.onnx")
    if cache:
        model, decode = build_phases(arch, config, decode_path.name, context=context,
                                     with_weights=with_weights, seed=seed)
        save(decode, decode_path)
    elif context is not None:
        raise OptionError("--context sizes the KV cache: give it with --cache")
    else:
        model = build(arch, config, with_weights=with_weights, seed=seed)
    saved = save(model, output)
    seconds = time.perf_counter() - start
    params, _ = graph_parameters(model)
    per_token = flops_per_token(arch, config) if res.seq else None
    report = {
        "model": str(saved.model_path),
        "weights": str(saved.weights_path),
        "weights_written": saved.weights_written,
        "arch": arch,
        "config": res.as_dict(),
        "parameters": params,
        "parameters_closed_form": parameter_count(arch, config),
        "active_parameters": active_parameter_count(arch, config),
        "weight_bytes": saved.weight_bytes,
        "model_bytes": saved.model_bytes,
        "nodes": len(model.graph.node),
        "opset": model.opset_import[0].version,
        "forward_flops_per_token": per_token,
        "seconds": round(seconds, 3),
    }
    if cache:
        report["decode_model"] = str(decode_path)
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
        return
    _print(report, res.seq)


def _print(r: dict[str, Any], seq: int | None) -> None:
    console = Console(highlight=False, soft_wrap=True)
    cfg = r["config"]
    console.print(f"wrote [bold]{markup_safe(r['model'])}[/] ({_size(r['model_bytes'])}, "
                  f"{r['nodes']} nodes, "
                  f"opset {r['opset']}) in {r['seconds']:.2f} s")
    shape = f"{cfg['layers']} layers, hidden {cfg['hidden']}, {cfg['heads']} heads"
    if cfg["kv_heads"] != cfg["heads"]:
        shape += f" ({cfg['kv_heads']} kv)"
    if r["arch"] == "deepseek":
        shape += f", MLA latent {cfg['kv_lora_rank']}+{cfg['qk_rope_head_dim']}"
        shape += f", first {cfg['dense_layers']} dense (ffn {cfg['dense_ffn']})"
    if r["arch"] in ("moe", "deepseek"):
        shape += f", {cfg['experts']} experts top-{cfg['top_k']}"
        shape += f" + {cfg['shared_experts']} shared" if cfg["shared_experts"] else ""
    console.print(f"  {r['arch']}: {shape}, ffn {cfg['ffn']}, vocab {cfg['vocab']}, "
                  f"{cfg['dtype']}")
    active = r["active_parameters"]
    extra = f" ({_size(active, '')} active per token)" if active != r["parameters"] else ""
    console.print(f"  parameters {_size(r['parameters'], '')}{extra}")
    state = "written" if r["weights_written"] else "declared, not written"
    console.print(f"  weights {_size(r['weight_bytes'])} in {markup_safe(r['weights'])} ({state})")
    if r["forward_flops_per_token"] is not None:
        console.print(f"  forward {_size(r['forward_flops_per_token'], 'FLOP')}/token at seq {seq}")
