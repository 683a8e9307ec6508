#!/usr/bin/env bash
# The shardc command line, start to finish: inspect a model, check a cluster, compile a
# plan, check it, ask why, verify the numbers (in one process and over gloo), drive it
# from a script with --json, re-emit it, and plan a large model that exists only as a
# graph. Run it from the repository root (after `make demo` or `pip install -e .`):
#
#     bash examples/cli_walkthrough.sh [WORKDIR]      # default: out/walkthrough
#
# Every command is one a user would type; the test suite runs this file as written.
set -euo pipefail
OUT=${1:-out/walkthrough}
MODEL=examples/models/tiny_gpt2.onnx
TOPO=topologies/localhost.topo
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "1. What is in the model? (ops, parameters, FLOPs, heaviest nodes)"
shardc inspect "$MODEL" --top 3

step "2. What is the cluster? This CPU, split into 2 devices by the topology's 'let devices'"
shardc topo check "$TOPO" --set devices=2

step "3. Compile onto 2 devices, tensor parallelism pinned to 2 (the solver places the rest)"
shardc compile "$MODEL" --topology "$TOPO" --set devices=2 --pin tp=2 \
    -o "$OUT/plan" --report "$OUT/plan.html" --force
ls "$OUT/plan"

step "4. Are the files consistent? (models valid, Send/Recv paired, weights tiled)"
shardc check-plan "$OUT/plan"

step "5. Why? Where a node went, how it is split, what it sends"
shardc explain "$OUT/plan" node_Gemm_280     # or a value, or a weight's name

step "6. Do the device programs compute the model? In-process, then one process per rank"
shardc verify "$OUT/plan"
shardc verify "$OUT/plan" --procs

step "7. From a script: --json prints one JSON object on stdout"
shardc compile "$MODEL" --topology "$TOPO" --set devices=4 -o "$OUT/json" --force --json \
    | python -c 'import json, sys; p = json.load(sys.stdin)["plan"]["partition"]
print("dp", p["dp"], "pp", p["pp"], "step", p["step_seconds"], "s", p["solver"]["status"])'

step "8. Re-emit a plan from its plan.json: the same files, byte for byte"
shardc compile "$MODEL" --topology "$TOPO" --plan "$OUT/plan/plan.json" -o "$OUT/again" --force -q
diff -r "$OUT/plan" "$OUT/again" && echo "identical"

step "9. Plan a model you do not have: a 16-layer Llama-70B-wide graph (no weights written)"
shardc synth llama --layers 16 --hidden 8192 --heads 64 --kv-heads 8 --ffn 28672 \
    --vocab 32000 --seq 4096 --batch 1 -o "$OUT/llama16.onnx"
shardc compile "$OUT/llama16.onnx" --topology topologies/dgx_h100_superpod.topo \
    --set nodes=2 --global-batch 256 --time-limit 1 -o "$OUT/llama16" --force
