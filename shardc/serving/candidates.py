"""Instance shapes the search chooses among, each priced once by the cost model.

An instance is one copy of the model on ``tp·dp·pp`` devices of one pool (one device
kind). Its shape: tensor parallelism ``tp`` inside a scale-up island, attention data
parallelism ``dp`` (MoE only: EP = ``tp·dp``, the whole stage), pipeline stages ``pp``,
redundant expert slots per rank, and its batch: sequences per DP rank for decode, prompt
tokens per forward per DP rank for prefill (a prompt longer than that is *chunked*),
both for an aggregated instance, which runs each step as decode tokens plus a prefill
chunk sized so prompts arrive as fast as outputs finish (chunked prefill, Sarathi-Serve).

Every candidate carries its step time, its rate, its memory per device and its KV-cache
capacity; the infeasible (out of memory) are dropped here, the SLO is applied in the
solver so the Pareto table can reuse the same list.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from shardc.serving.arch import ServingModel
from shardc.serving.fabric import Fabric, Pool
from shardc.serving.kernels import kernel_lines
from shardc.serving.shapes import (
    Parallel,
    Quant,
    StepContext,
    StepEstimate,
    StepShape,
    element_bytes,
)
from shardc.serving.step import accepted_tokens, expert_imbalance, step_time
from shardc.serving.workload import Workload, parse_duration

OVERHEAD_TAG = "step_overhead_per_layer"
"""Kind tag giving the fixed time per layer per step (``tag step_overhead_per_layer 20us``)."""

RESERVE = 0.10
"""Memory per device no plan uses: vLLM's default ``gpu_memory_utilization=0.9``."""

TP_CHOICES = (1, 2, 4, 8, 16)
EP_LADDER = (1, 2, 4, 8, 16, 24, 32, 48, 64, 72, 96, 128, 144, 160, 192, 256, 288, 320, 384,
             512, 576, 640, 768, 1024)
"""Expert-parallel degrees tried: powers of two and the node multiples DeepSeek (32, 144,
320) and CloudMatrix384 (288, 320, 384) deploy."""
PP_CHOICES = (1, 2, 4, 8)
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
PREFILL_CHUNKS = (512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True, slots=True)
class Options:
    """Search options that shape the candidates."""

    quant: Quant = field(default_factory=Quant)
    mtp: int = 0
    acceptance: float = 0.0
    pins: tuple[tuple[str, int], ...] = ()
    overlap: bool = True
    moe_comm: str = "alltoall"

    def pin(self, key: str, role: str = "") -> int | None:
        """The pinned value of ``role.key`` (``decode.ep``), else of ``key``, or None."""
        pins = dict(self.pins)
        return pins.get(f"{role}.{key}", pins.get(key))


@dataclass(frozen=True, slots=True)
class Candidate:
    """One priced instance shape."""

    role: str
    pool: Pool
    par: Parallel
    redundant: int
    """Redundant expert slots over the whole EP group."""
    batch: int
    """Decode: sequences per DP rank. Prefill: prompt tokens per forward per DP rank."""
    chunk: int
    """Aggregated: prefill tokens per step per DP rank (0 otherwise)."""
    step: StepEstimate
    moe: bool
    tpot: float
    ttft_part: float
    """Prefill: queue + the prompt's forwards. Aggregated: the whole TTFT. Decode: 0."""
    output_rate: float
    """Output tokens/s the instance emits (decode, aggregated)."""
    request_rate: float
    """Requests/s the instance completes (its prefill side for prefill instances)."""
    in_flight: int
    """Sequences it holds at once (decode, aggregated)."""
    memory_per_device: float
    kv_capacity_tokens: float
    """Tokens of KV cache the instance can hold beyond its weights and workspace."""

    @property
    def devices(self) -> int:
        """Devices of one instance."""
        return self.par.devices

    def describe(self) -> str:
        """``h100_sxm tp4 dp8 pp1 batch 64``."""
        ep = f" ep{self.par.ep}" if self.par.ep > 1 and self.moe else ""
        return (f"{self.pool.kind.name} tp{self.par.tp} dp{self.par.dp}{ep} pp{self.par.pp} "
                f"batch {self.batch}")


def _weights_per_device(m: ServingModel, par: Parallel, slots: int, q: Quant) -> float:
    wb, act = q.weight_bytes, element_bytes(q.activations)
    per_layer = m.attention_params / par.tp
    dense = (m.layers - m.moe_layers) * m.dense_ffn_params / par.tp
    moe = m.moe_layers * ((slots + m.shared_experts) * m.expert_params + m.hidden * m.experts)
    body = (m.layers * per_layer + dense + moe) * wb / par.pp
    return body + m.embedding_params * act / par.tp / min(par.pp, 2)


def _shapes(m: ServingModel, pool: Pool, opts: Options, role: str
            ) -> Iterator[tuple[Parallel, int]]:
    """(parallel shape, redundant slots) that fit the pool and the pins."""
    n = len(pool.devices)
    for tp in TP_CHOICES:
        if tp > pool.island or m.heads % tp or opts.pin("tp", role) not in (None, tp):
            continue
        pinned = opts.pin("ep", role)
        eps = sorted(set(EP_LADDER) | ({pinned} if pinned else set())) if m.moe else [tp]
        for ep in eps:
            if ep % tp or ep > n or pinned not in (None, ep if m.moe else None):
                continue
            if m.moe and pinned is None and ep > pool.island and ep % pool.island:
                continue  # across islands, whole islands only
            dp = ep // tp
            if opts.pin("dp", role) not in (None, dp):
                continue
            for pp in PP_CHOICES:
                if ep * pp > n or m.layers % pp or opts.pin("pp", role) not in (None, pp):
                    continue
                for redundant in _redundancy(m, ep, opts, role):
                    yield Parallel(tp, dp, pp), redundant


def _redundancy(m: ServingModel, ep: int, opts: Options, role: str) -> tuple[int, ...]:
    if not m.moe or ep == 1:
        return (0,)
    pinned = opts.pin("redundant", role)
    if pinned is not None:
        return (pinned,) if (m.experts + pinned) % ep == 0 else ()
    fill = -m.experts % ep
    return (fill, fill + ep) if fill + ep <= m.experts else (fill,)


def _context(fabric: Fabric, pool: Pool, par: Parallel, m: ServingModel, redundant: int,
             tokens: float, opts: Options) -> StepContext:
    devs = pool.devices
    hop = fabric.hop(devs[0], devs[par.ep]) if par.pp > 1 else (math.inf, 0.0)
    frac = redundant / m.experts if m.experts else 0.0
    overhead = pool.kind.tags.get(OVERHEAD_TAG)
    return StepContext(
        tp_tiers=fabric.tiers(devs[:par.tp]), ep_tiers=fabric.tiers(devs[:par.ep]),
        overlap=opts.overlap, imbalance=expert_imbalance(tokens * m.top_k, par.ep, frac),
        redundant=redundant,
        pp_bandwidth=hop[0], pp_latency=hop[1],
        layer_overhead=parse_duration(overhead, f"kind {pool.kind.name}: tag {OVERHEAD_TAG}")
        if overhead else 0.0,
        lines=kernel_lines(pool.kind.name, pool.kind.tags), moe_comm=opts.moe_comm,
    )


def _memory(m: ServingModel, pool: Pool, par: Parallel, redundant: int, q: Quant,
            tokens_per_rank: float) -> tuple[float, float, float]:
    """(usable bytes, weights+workspace bytes, KV bytes per cached token per device)."""
    slots = math.ceil((m.experts + redundant) / par.ep) if m.moe else 0
    weights = _weights_per_device(m, par, slots, q)
    act = element_bytes(q.activations)
    workspace = tokens_per_rank * max(m.hidden, m.ffn // par.tp, m.expert_ffn) * act * 6
    usable = float(pool.kind.memory_bytes or 0.0) * (1.0 - RESERVE)
    kv_tok = m.kv_bytes_per_token(element_bytes(q.kv)) / m.kv_split(par.tp) / par.pp
    return usable, weights + workspace, kv_tok


def decode_candidates(m: ServingModel, wl: Workload, fabric: Fabric, pool: Pool,
                      opts: Options) -> list[Candidate]:
    """Priced decode shapes on ``pool`` that fit in memory."""
    acc = accepted_tokens(opts.mtp, opts.acceptance)
    out = []
    for par, redundant in _shapes(m, pool, opts, "decode"):
        for b in DECODE_BATCHES:
            if opts.pin("batch", "decode") not in (None, b):
                continue
            usable, fixed, kv_tok = _memory(m, pool, par, redundant, opts.quant, b * (1 + opts.mtp))
            capacity = (usable - fixed) / kv_tok if kv_tok else math.inf
            if capacity < b * par.pp * wl.max_context:
                break  # larger batches fit even less
            seqs = b * par.dp
            shape = StepShape(decode_seqs=seqs, decode_context=wl.mean_decode_context,
                              tokens_per_seq=1 + opts.mtp)
            ctx = _context(fabric, pool, par, m, redundant, seqs * (1 + opts.mtp), opts)
            step = step_time(m, pool.kind, par, opts.quant, shape, ctx)
            tpot = step.seconds / acc
            rate = seqs * par.pp * acc / step.seconds
            out.append(Candidate(
                "decode", pool, par, redundant, b, 0, step, m.moe, tpot, 0.0, rate, rate / wl.osl,
                seqs * par.pp, fixed + b * par.pp * wl.max_context * kv_tok, capacity * par.dp))
    return out


HEADROOM = (1.25, 1.5, 2.0, 3.0)
"""Prefill capacity over the prompt load it is planned for (an aggregated instance's chunk
over the steady state's prompt tokens per step; a prefill instance's rate over what the
solver matches to decode): prompts arrive at random and queue for it."""


def prefill_candidates(m: ServingModel, wl: Workload, fabric: Fabric, pool: Pool,
                       opts: Options) -> list[Candidate]:
    """Priced prefill shapes on ``pool`` that fit in memory, each at every `HEADROOM`.

    Prompts arrive at random, so a prefill instance run at its full rate queues them
    without bound: each shape is offered at ``1/head`` of its rate (its ``request_rate``,
    what the solver matches to decode) with M/D/1's mean wait in its TTFT.
    """
    new = max(1.0, wl.new_prompt_tokens)
    out = []
    for par, redundant in _shapes(m, pool, opts, "prefill"):
        for c in sorted(set(PREFILL_CHUNKS) | {math.ceil(new)}):
            if c > 4 * max(PREFILL_CHUNKS) or opts.pin("chunk", "prefill") not in (None, c):
                continue
            usable, fixed, kv_tok = _memory(m, pool, par, redundant, opts.quant, c)
            if usable - fixed < kv_tok * max(c, wl.max_context) * par.pp:
                continue
            tokens = c * par.dp
            prefix = wl.isl * wl.prefix_hit
            shape = StepShape(prefill_tokens=tokens, prefill_context=prefix + min(c, new) / 2)
            ctx = _context(fabric, pool, par, m, redundant, tokens, opts)
            step = step_time(m, pool.kind, par, opts.quant, shape, ctx)
            forwards = math.ceil(new / c)
            rate = tokens * par.pp / step.seconds / new
            for head in HEADROOM:
                # the solver matches prefill to decode at rate / head, so each instance is
                # busy 1/head of the time and a prompt first waits M/D/1's mean queue
                rho = 1.0 / head
                wait = rho / (2.0 * (1.0 - rho)) * forwards * step.seconds
                ttft = wait + step.seconds * (forwards + 0.5)  # + its chunks + half a forward
                out.append(Candidate(
                    "prefill", pool, par, redundant, c, 0, step, m.moe, 0.0, ttft, 0.0,
                    rate / head, 0, fixed + kv_tok * c * par.pp,
                    (usable - fixed) / kv_tok * par.dp))
    return out


def _prompt_queue(n: int, b: float, osl: float, mixed: float, decode: float
                  ) -> tuple[float, float] | None:
    """(mean step, TTFT) of an aggregated rank whose prompts take ``n`` mixed steps.

    Per step the rank emits ``b`` tokens, so ``b / osl`` prompts must start per step: a
    share ``q = n·b/osl`` of the steps carry a chunk (``mixed`` s), the rest decode only.
    Prompts arriving at random queue for the prefill slot, busy a share ``ρ`` of the time:
    M/D/1's mean wait ``ρ / (2(1 − ρ))`` service times (Pollaczek-Khinchine), then the
    prompt's ``n`` steps and half a step to the next step boundary. None when the chunk
    cannot keep up (``q ≥ 1``).
    """
    q = n * b / osl
    if q >= 1.0:
        return None
    mean = q * mixed + (1.0 - q) * decode
    rho = q * mixed / mean
    service = n * mixed
    return mean, rho / (2.0 * (1.0 - rho)) * service + service + 0.5 * mean


def aggregated_candidates(m: ServingModel, wl: Workload, fabric: Fabric, pool: Pool,
                          opts: Options) -> list[Candidate]:
    """Priced aggregated shapes: decode batch plus a prefill chunk when a prompt waits.

    The chunk is the steady state's prompt tokens per step times a `HEADROOM`; TPOT is
    the mean over mixed and decode-only steps, TTFT includes the prompt's queueing
    (`_prompt_queue`). The reported step is the mixed one.
    """
    acc = accepted_tokens(opts.mtp, opts.acceptance)
    new = max(1.0, wl.new_prompt_tokens)
    out = []
    for par, redundant in _shapes(m, pool, opts, "aggregated"):
        for b in DECODE_BATCHES:
            if opts.pin("batch", "aggregated") not in (None, b):
                continue
            seqs = b * par.dp
            decode: float | None = None
            for head in HEADROOM:
                chunk = max(1, math.ceil(b * acc * new / wl.osl * head))
                if opts.pin("chunk", "aggregated") not in (None, chunk):
                    continue
                usable, fixed, kv_tok = _memory(m, pool, par, redundant, opts.quant,
                                                b * (1 + opts.mtp) + chunk)
                capacity = (usable - fixed) / kv_tok if kv_tok else math.inf
                if capacity < b * par.pp * wl.max_context:
                    continue
                if decode is None:
                    dshape = StepShape(decode_seqs=seqs, decode_context=wl.mean_decode_context,
                                       tokens_per_seq=1 + opts.mtp)
                    dctx = _context(fabric, pool, par, m, redundant, seqs * (1 + opts.mtp), opts)
                    decode = step_time(m, pool.kind, par, opts.quant, dshape, dctx).seconds
                shape = StepShape(decode_seqs=seqs, decode_context=wl.mean_decode_context,
                                  prefill_tokens=chunk * par.dp,
                                  prefill_context=wl.isl * wl.prefix_hit + new / 2,
                                  tokens_per_seq=1 + opts.mtp)
                ctx = _context(fabric, pool, par, m, redundant,
                               seqs * (1 + opts.mtp) + chunk * par.dp, opts)
                step = step_time(m, pool.kind, par, opts.quant, shape, ctx)
                queued = _prompt_queue(math.ceil(new / chunk), b * acc, wl.osl, step.seconds,
                                       decode)
                if queued is None:
                    continue
                mean, ttft = queued
                rate = seqs * par.pp * acc / mean
                out.append(Candidate(
                    "aggregated", pool, par, redundant, b, chunk, step, m.moe, mean / acc, ttft,
                    rate, rate / wl.osl, seqs * par.pp,
                    fixed + b * par.pp * wl.max_context * kv_tok, capacity * par.dp))
    return out
