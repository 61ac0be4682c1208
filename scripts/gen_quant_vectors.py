#!/usr/bin/env python3
"""Writes the dequantization test vectors of tests/quants into tests/data/quants/.

Each file <TYPE>.bin holds raw GGML blocks and the f32 values gguf-py's numpy reference
(gguf.quants.dequantize) gives for them; the C++ test checks atom's dequantize_row against them
bit for bit. Layout, little-endian:
    char[4] "AQV1"; u32 ggml type id; u32 n_elements; u32 n_bytes; u8 raw[n_bytes]; f32 expected[n]

Types gguf-py can quantize (F32, F16, BF16, Q8_0, Q4_0, Q4_1) are quantized from random data at
several magnitudes (down to f16-subnormal scales); Q4_K and Q6_K, which it can only dequantize,
are random bytes with sane f16 scales. Run from the repo root:  python3 scripts/gen_quant_vectors.py
"""

from __future__ import annotations

import pathlib
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

OUT_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "quants"
rng = np.random.default_rng(20240611)


def write(name: str, qtype: T, raw: np.ndarray) -> None:
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    block_size, type_size = quants.GGML_QUANT_SIZES[qtype]
    assert raw.size % type_size == 0
    n = raw.size // type_size * block_size
    if qtype in (T.F32, T.F16):
        view = raw.view(np.float32 if qtype == T.F32 else np.float16)
        expected = quants.dequantize(view, qtype)
    else:
        expected = quants.dequantize(raw.reshape(1, -1), qtype)
    expected = np.ascontiguousarray(expected, dtype=np.float32).reshape(-1)
    assert expected.size == n
    path = OUT_DIR / f"{name}.bin"
    with open(path, "wb") as f:
        f.write(b"AQV1")
        f.write(struct.pack("<III", int(qtype), n, raw.size))
        f.write(raw.tobytes())
        f.write(expected.astype("<f4").tobytes())
    print(f"{path.relative_to(OUT_DIR.parent.parent.parent)}: {n} elements, {path.stat().st_size} bytes")


def random_rows(rows: int, cols: int) -> np.ndarray:
    """Rows at magnitudes from 1e2 down to 1e-5 (whose block scales are f16 subnormals or 0), one
    all-zero row and one constant row, so the scale edge cases are covered."""
    scales = np.array([1.0, 100.0, 1e-3, 1e-4, 1e-5, 0.0, 1.0, 0.25])
    data = rng.standard_normal((rows, cols)).astype(np.float32)
    data *= scales[np.arange(rows) % scales.size, None].astype(np.float32)
    data[6 % rows, :] = 0.75  # constant row: Q4_1's d is 0, only m remains
    return data


def quantized(qtype: T, rows: int, cols: int) -> np.ndarray:
    return quants.quantize(random_rows(rows, cols), qtype)


def f16_bits(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float16).view(np.uint16)


def gen_plain() -> None:
    f32 = rng.standard_normal(256).astype(np.float32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-45, 3.4e38], np.float32)
    f32[: specials.size] = specials
    write("F32", T.F32, f32.view(np.uint8))

    # F16: random values plus every class: zero, -zero, the smallest and largest subnormals,
    # the smallest normal, the largest finite, infinities and a quiet NaN.
    f16 = f16_bits(rng.standard_normal(512) * 4)
    special = np.array([0x0000, 0x8000, 0x0001, 0x03FF, 0x8001, 0x83FF, 0x0400, 0x7BFF, 0xFBFF,
                        0x7C00, 0xFC00, 0x7E00], np.uint16)
    f16[: special.size] = special
    f16[special.size: special.size + 64] = rng.integers(0, 0x7C00, 64, dtype=np.uint16)
    write("F16", T.F16, f16.view(np.uint8))

    bf16 = quants.quantize(rng.standard_normal(256).astype(np.float32) * 8, T.BF16).view(np.uint16)
    special = np.array([0x0000, 0x8000, 0x0001, 0x807F, 0x7F7F, 0x7F80, 0xFF80, 0x7FC0], np.uint16)
    bf16[: special.size] = special
    write("BF16", T.BF16, bf16.view(np.uint8))


def gen_legacy() -> None:
    for qtype in (T.Q8_0, T.Q4_0, T.Q4_1):
        write(qtype.name, qtype, quantized(qtype, 8, 256))


def random_f16(n: int, lo: float, hi: float, signed: bool) -> np.ndarray:
    v = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    if signed:
        v *= rng.choice([-1.0, 1.0], n)
    return f16_bits(v)


def gen_k_quants() -> None:
    n_blocks = 8
    # Q4_K: {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}; the last block has a subnormal d.
    blocks = rng.integers(0, 256, (n_blocks, 144), dtype=np.uint8)
    blocks[:, 0:2] = random_f16(n_blocks, 1e-4, 1e-1, signed=False).view(np.uint8).reshape(-1, 2)
    blocks[:, 2:4] = random_f16(n_blocks, 1e-4, 1e-1, signed=False).view(np.uint8).reshape(-1, 2)
    blocks[-1, 0:2] = np.array([0x0123], np.uint16).view(np.uint8)
    write("Q4_K", T.Q4_K, blocks)

    # Q6_K: {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}; d of either sign.
    blocks = rng.integers(0, 256, (n_blocks, 210), dtype=np.uint8)
    blocks[:, 208:210] = random_f16(n_blocks, 1e-4, 1e-1, signed=True).view(np.uint8).reshape(-1, 2)
    blocks[-1, 208:210] = np.array([0x8042], np.uint16).view(np.uint8)
    write("Q6_K", T.Q6_K, blocks)


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    gen_plain()
    gen_legacy()
    gen_k_quants()


if __name__ == "__main__":
    main()
