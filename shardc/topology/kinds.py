"""Device kinds: ``kind NAME [extends BASE] { ... }`` blocks to :class:`DeviceKind`.

A kind's properties::

    compute DTYPE[, DTYPE ...] RATE      # dense peak; TFLOPS/PFLOPS, TOPS for int dtypes
    memory SIZE                          # GB, GiB, TB ...
    memory_bandwidth RATE                # GB/s, TB/s ...
    efficiency compute|memory FACTOR     # achievable fraction of peak, in (0, 1]
    efficiency compute FACTOR at TIME    # ... of an op that takes TIME at peak
    efficiency memory FACTOR at SIZE     # ... of a memory-bound op moving SIZE
    launch TIME                          # fixed cost of every kernel
    tag KEY [VALUE]                      # free-form; 'tag role host' keeps the planner off

``extends`` copies the base kind's properties first (SKUs of one chip, an H800 from an
H100). A kind the planner may use must say what it computes and how much memory it has;
a host kind (``tag role host``) may leave those out.
"""

from __future__ import annotations

from collections.abc import Mapping

from shardc.topology import units
from shardc.topology.diagnostics import did_you_mean
from shardc.topology.model import DTYPES, INT_DTYPES, DeviceKind
from shardc.topology.syntax import KindDef, Prop, Stmt, String
from shardc.topology.values import Env, Reader

_USAGE = {
    "compute": "e.g. 'compute bf16, fp16 312 TFLOPS' or 'compute int8 624 TOPS'",
    "memory": "e.g. 'memory 80 GB'",
    "memory_bandwidth": "e.g. 'memory_bandwidth 3.35 TB/s'",
    "efficiency": "e.g. 'efficiency compute 0.5', 'efficiency memory 0.8' or "
    "'efficiency compute 0.6 at 3.2 us'",
    "launch": "e.g. 'launch 2 us'",
    "tag": "e.g. 'tag role prefill'",
}


def build_kinds(env: Env, defs: Mapping[str, KindDef]) -> dict[str, DeviceKind]:
    """Every defined kind, with ``extends`` chains resolved (cycles are errors).

    Each kind is built once, after its base: the ``extends`` chain is walked with a loop,
    not recursion, so a file of 20,000 kinds each extending the last is linear and cannot
    overflow the stack.
    """
    built: dict[str, DeviceKind] = {}
    fields_of: dict[str, dict] = {}
    for name in defs:
        chain: list[str] = []  # name, its base, its base's base ... up to one built
        at = name
        while at not in fields_of:
            kdef = defs[at]
            if at in chain:
                via = " -> ".join(chain[chain.index(at):])
                raise env.error(f"kind '{at}' extends itself (via {via})", kdef.name_pos)
            chain.append(at)
            if kdef.base is None:
                break
            assert kdef.base_pos is not None
            if kdef.base not in defs:
                raise env.error(f"unknown kind '{kdef.base}'", kdef.base_pos,
                                did_you_mean(kdef.base, defs, listing="kinds"))
            at = kdef.base
        for kind in reversed(chain):
            base = defs[kind].base
            fields_of[kind] = _build(env, defs[kind], None if base is None else fields_of[base])
            built[kind] = DeviceKind(name=kind, **fields_of[kind])
    return built


def _build(env: Env, kdef: KindDef, base: dict | None) -> dict:
    """The property dict of ``kdef``: a copy of its base's, then its own properties."""
    fields: dict = {"peak_flops": {}, "tags": {}}
    if base is not None:
        fields = {**base, "peak_flops": dict(base["peak_flops"]), "tags": dict(base["tags"])}
    _apply(env, kdef.body, fields, kdef.name)
    for curve in ("compute_curve", "memory_curve"):
        if curve in fields:
            fields[curve] = tuple(sorted(dict(fields[curve]).items()))
    _check_complete(env, kdef, fields)
    return fields


def _apply(env: Env, body: tuple[Stmt, ...], fields: dict, name: str) -> None:
    seen: dict[str, Prop] = {}
    for stmt in body:
        if not isinstance(stmt, Prop):
            raise env.error("only properties are allowed in a kind", stmt.pos,
                            "devices and groups are declared outside kinds: 'gpu[0..7]: "
                            f"{name}'")
        if stmt.name not in _USAGE:
            raise env.error(f"unknown property '{stmt.name}' in kind '{name}'", stmt.name_pos,
                            did_you_mean(stmt.name, _USAGE, listing="kind properties"))
        once = stmt.name in ("memory", "memory_bandwidth", "launch")
        if once and stmt.name in seen:
            raise env.error(f"'{stmt.name}' is set twice in kind '{name}'", stmt.name_pos)
        seen[stmt.name] = stmt
        _PROPS[stmt.name](env, Reader(env, stmt, _USAGE[stmt.name]), fields)


def _compute(env: Env, r: Reader, fields: dict) -> None:
    dtypes = []
    while r.peek_is_word():
        dtype, pos = r.word("a dtype")
        if dtype not in DTYPES:
            raise env.error(f"unknown dtype '{dtype}'", pos,
                            did_you_mean(dtype, DTYPES, listing="dtypes"))
        dtypes.append((dtype, pos))
    if not dtypes:
        r.word("a dtype such as bf16")
    value = r.prop.values[r.i] if r.more else None
    rate, _ = r.quantity(units.COMPUTE)
    r.done()
    unit = getattr(value, "unit", None)
    for dtype, pos in dtypes:
        if unit in units.OPS_UNITS and dtype not in INT_DTYPES:
            raise env.error(f"'{unit}' counts integer operations but {dtype} is a float dtype",
                            getattr(value, "unit_pos", None) or pos,
                            f"write {unit.replace('OPS', 'FLOPS')} for {dtype}")
        fields["peak_flops"][dtype] = rate


def _memory(env: Env, r: Reader, fields: dict) -> None:
    fields["memory_bytes"] = r.quantity(units.SIZE)[0]
    r.done()


def _memory_bandwidth(env: Env, r: Reader, fields: dict) -> None:
    fields["memory_bandwidth"] = r.quantity(units.BANDWIDTH)[0]
    r.done()


def _efficiency(env: Env, r: Reader, fields: dict) -> None:
    which, pos = r.word("'compute' or 'memory'")
    if which not in ("compute", "memory"):
        raise env.error(f"efficiency applies to 'compute' or 'memory', not '{which}'", pos)
    value, vpos = r.number("a factor in (0, 1]")
    if not 0 < value <= 1:
        raise env.error(f"an efficiency is a fraction in (0, 1], got {float(value):g}", vpos)
    if not r.more:
        fields[f"{which}_efficiency"] = float(value)
        return
    word, wpos = r.word("'at'")
    if word != "at":
        raise env.error(f"expected 'at' after the factor, found '{word}'", wpos)
    at, apos = r.quantity(units.TIME if which == "compute" else units.SIZE)
    r.done()
    if at <= 0:
        raise env.error("an efficiency point needs a size above 0", apos)
    points = dict(fields.get(f"{which}_curve", ()))
    points[at] = float(value)
    fields[f"{which}_curve"] = tuple(points.items())


def _launch(env: Env, r: Reader, fields: dict) -> None:
    fields["kernel_launch"] = r.quantity(units.TIME)[0]
    r.done()


def _tag(env: Env, r: Reader, fields: dict) -> None:
    key, _ = r.word("a tag name")
    value = ""
    if r.more:
        raw = r.prop.values[r.i]
        r.i += 1
        value = raw.value if isinstance(raw, String) else env.text(raw.pos)
    r.done()
    fields["tags"][key] = value


_EXAMPLE = {
    "compute": "compute bf16 312 TFLOPS",
    "memory": "memory 80 GB",
    "memory_bandwidth": "memory_bandwidth 2 TB/s",
}

_PROPS = {
    "compute": _compute,
    "memory": _memory,
    "memory_bandwidth": _memory_bandwidth,
    "efficiency": _efficiency,
    "launch": _launch,
    "tag": _tag,
}


def _check_complete(env: Env, kdef: KindDef, fields: dict) -> None:
    if fields["tags"].get("role") == "host":
        fields.setdefault("memory_bytes", None)
        fields.setdefault("memory_bandwidth", None)
        return
    missing = [p for p, key in (("compute", "peak_flops"), ("memory", "memory_bytes"),
                                ("memory_bandwidth", "memory_bandwidth"))
               if not fields.get(key)]
    if missing:
        raise env.error(
            f"kind '{kdef.name}' needs {', '.join(missing)}", kdef.name_pos,
            f"add e.g. '{_EXAMPLE[missing[0]]}', or 'tag role host' if the planner should "
            "not place work on this kind",
        )
