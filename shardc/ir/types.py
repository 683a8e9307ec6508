"""Element types and tensor types of the IR.

Planning needs only a tensor's dtype and shape, never its data, so these are the whole
vocabulary the passes see. Dims are ``int`` when known, ``str`` when symbolic (``"batch"``,
``"seq"``: bound later from ``--dim``) and ``None`` when nothing is known.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

Dim = int | str | None


class DType(enum.Enum):
    """ONNX element types, with the facts costing needs (bits, family, short name).

    The value is the ONNX ``TensorProto.DataType`` code, so conversion in the frontend is
    ``DType(code)`` without importing onnx here.
    """

    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23
    FLOAT8E8M0 = 24
    UINT2 = 25
    INT2 = 26

    @property
    def bits(self) -> int:
        """Storage size of one element in bits (STRING counts as a pointer-sized 64)."""
        return _BITS[self]

    @property
    def short(self) -> str:
        """Name used in reports, CLI options and cost tables (``fp32``, ``bf16``, ``fp8``…)."""
        return _SHORT[self]

    @property
    def is_float(self) -> bool:
        """Floating point, i.e. its arithmetic runs on the device's FLOP units."""
        return self in _FLOATS

    @property
    def compute_class(self) -> str:
        """The peak-throughput class a device kind lists for this type.

        fp8 variants share the fp8 peak, ints narrower than 16 bits the int8 peak; fp64
        and fp32 share fp32 on the parts we model (a conservative choice).
        """
        return _COMPUTE_CLASS.get(self, "fp32")

    @classmethod
    def from_short(cls, name: str) -> DType:
        """Parse ``fp32``/``bf16``/``fp16``/``fp8``/``int8`` and the ONNX spellings."""
        key = name.strip().lower()
        for dt in cls:
            if key in (dt.short, dt.name.lower()):
                return dt
        raise ValueError(f"unknown dtype {name!r}")


_BITS = {
    DType.FLOAT: 32,
    DType.UINT8: 8,
    DType.INT8: 8,
    DType.UINT16: 16,
    DType.INT16: 16,
    DType.INT32: 32,
    DType.INT64: 64,
    DType.STRING: 64,
    DType.BOOL: 8,
    DType.FLOAT16: 16,
    DType.DOUBLE: 64,
    DType.UINT32: 32,
    DType.UINT64: 64,
    DType.COMPLEX64: 64,
    DType.COMPLEX128: 128,
    DType.BFLOAT16: 16,
    DType.FLOAT8E4M3FN: 8,
    DType.FLOAT8E4M3FNUZ: 8,
    DType.FLOAT8E5M2: 8,
    DType.FLOAT8E5M2FNUZ: 8,
    DType.UINT4: 4,
    DType.INT4: 4,
    DType.FLOAT4E2M1: 4,
    DType.FLOAT8E8M0: 8,
    DType.UINT2: 2,
    DType.INT2: 2,
}
_SHORT = {
    DType.FLOAT: "fp32",
    DType.UINT8: "uint8",
    DType.INT8: "int8",
    DType.UINT16: "uint16",
    DType.INT16: "int16",
    DType.INT32: "int32",
    DType.INT64: "int64",
    DType.STRING: "string",
    DType.BOOL: "bool",
    DType.FLOAT16: "fp16",
    DType.DOUBLE: "fp64",
    DType.UINT32: "uint32",
    DType.UINT64: "uint64",
    DType.COMPLEX64: "complex64",
    DType.COMPLEX128: "complex128",
    DType.BFLOAT16: "bf16",
    DType.FLOAT8E4M3FN: "fp8",
    DType.FLOAT8E4M3FNUZ: "fp8e4m3fnuz",
    DType.FLOAT8E5M2: "fp8e5m2",
    DType.FLOAT8E5M2FNUZ: "fp8e5m2fnuz",
    DType.UINT4: "uint4",
    DType.INT4: "int4",
    DType.FLOAT4E2M1: "fp4",
    DType.FLOAT8E8M0: "e8m0",
    DType.UINT2: "uint2",
    DType.INT2: "int2",
}
_FLOATS = frozenset(
    {
        DType.FLOAT,
        DType.FLOAT16,
        DType.DOUBLE,
        DType.BFLOAT16,
        DType.FLOAT8E4M3FN,
        DType.FLOAT8E4M3FNUZ,
        DType.FLOAT8E5M2,
        DType.FLOAT8E5M2FNUZ,
        DType.FLOAT4E2M1,
        DType.FLOAT8E8M0,
        DType.COMPLEX64,
        DType.COMPLEX128,
    }
)
_COMPUTE_CLASS = {
    DType.FLOAT16: "fp16",
    DType.BFLOAT16: "bf16",
    DType.FLOAT8E4M3FN: "fp8",
    DType.FLOAT8E4M3FNUZ: "fp8",
    DType.FLOAT8E5M2: "fp8",
    DType.FLOAT8E5M2FNUZ: "fp8",
    DType.FLOAT4E2M1: "fp4",
    DType.INT8: "int8",
    DType.UINT8: "int8",
    DType.INT4: "int8",
    DType.UINT4: "int8",
}


@dataclass(frozen=True, slots=True)
class TensorType:
    """Dtype and shape of a tensor value; ``shape is None`` means the rank is unknown."""

    dtype: DType
    shape: tuple[Dim, ...] | None

    @property
    def rank(self) -> int | None:
        """Number of dims, or None if unknown."""
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        """Every dim is a known integer, so sizes and costs are exact numbers."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int | None:
        """Element count, or None unless the shape is static."""
        if not self.is_static:
            return None
        assert self.shape is not None
        return math.prod(self.shape)  # type: ignore[arg-type]

    @property
    def nbytes(self) -> int | None:
        """Storage bytes (sub-byte types rounded up), or None unless the shape is static."""
        n = self.numel
        return None if n is None else (n * self.dtype.bits + 7) // 8

    def unknown_dims(self) -> list[str]:
        """Human-readable list of what keeps this type from being static."""
        if self.shape is None:
            return ["rank"]
        return [
            str(d) if isinstance(d, str) else f"dim {i}"
            for i, d in enumerate(self.shape)
            if not isinstance(d, int)
        ]

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype.short}[?]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.short}[{dims}]"
