#!/usr/bin/env bash
# Serving plans, start to finish, on stock topologies: a Llama-3.1-70B-shaped model on a
# pool of 4 DGX H100 + 4 H20 nodes (prefill on the H100s, decode on the H20s, the KV cache
# handed over InfiniBand), then a DeepSeek-shaped MoE on 4 H800 nodes (the experts'
# all-to-all across NVLink and InfiniBand). Models are graphs whose weights are declared,
# never written. Run it from the repository root:
#
#     bash examples/serving_walkthrough.sh [WORKDIR]      # default: out/serving
#
# Every command is one a user would type; the test suite runs this file as written and
# checks docs/serving.md's sample output against what it prints.
set -euo pipefail
OUT=${1:-out/serving}
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "1. A Llama-3.1-70B-shaped model (80 layers, GQA 64/8 heads)"
shardc synth llama --layers 80 --hidden 8192 --heads 64 --kv-heads 8 --ffn 28672 \
    --vocab 128256 -o "$OUT/llama70b.onnx"

step "2. Plan serving: 4000-token prompts, 500-token answers, TPOT <= 50 ms, TTFT <= 2 s"
shardc compile "$OUT/llama70b.onnx" --topology h100_h20_mixed -o "$OUT/plan70b" --force \
    --mode serving --isl 4000 --osl 500 --tpot 50ms --ttft 2s --report "$OUT/plan70b.html"

step "3. Is the folder consistent? (devices, kinds and links against the topology)"
shardc check-plan "$OUT/plan70b"

step "4. What does one decode device do?"
shardc explain "$OUT/plan70b" node4.gpu0

step "5. The same plan from Python"
python - "$OUT/plan70b" <<'PY'
import sys

import shardc

s = shardc.Plan.load(sys.argv[1]).serving
for i in s.instances[:1] + s.instances[-1:]:
    print(i.role, i.index, i.kind, f"tp{i.tp} pp{i.pp}", i.devices[0], f"{i.step_seconds * 1e3:.4g} ms")
print(f"KV {s.kv_transfer.bytes_per_request / 1e9:.3g} GB/request over {s.kv_transfer.plane}; "
      f"{s.tokens_per_s_per_device:.4g} tokens/s per device at TPOT {s.tpot * 1e3:.4g} ms")
PY

step "6. A DeepSeek-shaped MoE (64 experts, top-6, MLA) on 4 H800 nodes, decode EP 16"
shardc synth deepseek --layers 8 --hidden 2048 --heads 16 --experts 64 --top-k 6 \
    --dense-layers 1 --dense-ffn 8192 --ffn 1024 -o "$OUT/moe.onnx"
shardc compile "$OUT/moe.onnx" --topology deepseek_h800 --set nodes=4 -o "$OUT/moe" --force \
    --mode serving --isl 2000 --osl 500 --tpot 30ms --pin mode=disaggregated,decode.ep=16 \
    --report "$OUT/moe.html"
echo "reports: $OUT/plan70b.html $OUT/moe.html"
