"""The GGUF header reader against gguf-py, on the real model and on small and corrupt files; the LoRA test helper."""

from __future__ import annotations

import io
import math
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lora_gguf import write_lora

from oxillama_py.errors import LoadError
from oxillama_py.llama.gguf_file import GgufHeader, read_gguf_header

PROMPT = "The capital of France is"


# --- the real model -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_reader(model_path: Path) -> Any:
    """gguf-py takes ~10 s on the 262k-token vocabulary, so once per module."""
    import gguf

    return gguf.GGUFReader(model_path)


def test_gemma_header_matches_gguf_reader(model_path: Path, gemma_reader: Any) -> None:
    header = read_gguf_header(model_path)
    assert header.version == gemma_reader.fields["GGUF.version"].contents() == 3
    assert header.metadata["general.architecture"] == "gemma3"
    assert header.metadata["gemma3.block_count"] == 18
    assert header.metadata["gemma3.embedding_length"] == 640
    tokens = header.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list) and len(tokens) == 262144 and tokens[:3] == ["<pad>", "<eos>", "<bos>"]

    keys = [key for key in gemma_reader.fields if not key.startswith("GGUF.")]
    assert list(header.metadata) == keys
    for key in keys:
        assert header.metadata[key] == gemma_reader.fields[key].contents(), key

    assert len(header.tensors) == len(gemma_reader.tensors) == 236
    assert header.data_offset == gemma_reader.data_offset
    for tensor in gemma_reader.tensors:
        ours = header.tensors[tensor.name]
        assert ours.shape == tuple(int(dim) for dim in tensor.shape), tensor.name
        assert ours.ggml_type == int(tensor.tensor_type)
        assert header.data_offset + ours.offset == tensor.data_offset
    assert header.tensors["token_embd.weight"].shape == (640, 262144)
    assert header.tensors["blk.0.attn_q.weight"].shape == (640, 1024)
    assert header.tensors["blk.17.attn_v.weight"].shape == (640, 256)


def test_gemma_header_reads_no_tensor_data(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read = 0

    class Counting(io.BufferedReader):
        def read(self, size: int | None = -1) -> bytes:
            nonlocal read
            data = super().read(size)
            read += len(data)
            return data

    monkeypatch.setattr(Path, "open", lambda self, *args, **kwargs: Counting(io.FileIO(self, "rb")))
    header = read_gguf_header(model_path)
    assert header.data_offset < read <= header.data_offset + 64 * 1024  # the last chunk may overshoot a little
    assert read < model_path.stat().st_size // 30


# --- small files from gguf-py's writer ----------------------------------------------------------------------------


def _write_all_types(path: Path) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint8("t.u8", 255)
    writer.add_int8("t.i8", -128)
    writer.add_uint16("t.u16", 65535)
    writer.add_int16("t.i16", -32768)
    writer.add_uint32("t.u32", 2**32 - 1)
    writer.add_int32("t.i32", -(2**31))
    writer.add_float32("t.f32", 1.5)
    writer.add_uint64("t.u64", 2**64 - 1)
    writer.add_int64("t.i64", -(2**63))
    writer.add_float64("t.f64", math.pi)
    writer.add_bool("t.true", True)
    writer.add_bool("t.false", False)
    writer.add_string("t.str", "héllo ✓\nline")
    writer.add_array("a.i32", [1, -2, 3])
    writer.add_array("a.f32", [0.25, -1.0])
    writer.add_array("a.bool", [True, False, True])
    writer.add_array("a.str", ["a", "", "ünï"])
    writer.add_key_value("a.u8", [0, 7, 255], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT8)
    writer.add_key_value("a.u64", [2**64 - 1, 0], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT64)
    writer.add_key_value("a.f64", [math.e], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.FLOAT64)
    writer.add_array("a.nested", [[1, 2], [3]])
    rng = np.random.default_rng(0)
    writer.add_tensor("vec", rng.standard_normal(7).astype(np.float32))
    writer.add_tensor("mat", rng.standard_normal((3, 5)).astype(np.float32))
    writer.add_tensor("cube", rng.standard_normal((2, 3, 4)).astype(np.float16))
    writer.add_tensor("hyper", np.zeros((1, 2, 3, 4), dtype=np.int8))
    # two rows of 64 Q8_0 elements: 2 blocks of 34 bytes each per row
    writer.add_tensor("quant", np.zeros((2, 68), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    return _write_all_types(tmp_path / "small.gguf")


def test_small_file_every_value_type(small_file: Path) -> None:
    import gguf

    header = read_gguf_header(small_file)
    reader = gguf.GGUFReader(small_file)
    expected = {
        "general.architecture": "llama",
        "t.u8": 255,
        "t.i8": -128,
        "t.u16": 65535,
        "t.i16": -32768,
        "t.u32": 2**32 - 1,
        "t.i32": -(2**31),
        "t.f32": 1.5,
        "t.u64": 2**64 - 1,
        "t.i64": -(2**63),
        "t.f64": math.pi,
        "t.true": True,
        "t.false": False,
        "t.str": "héllo ✓\nline",
        "a.i32": [1, -2, 3],
        "a.f32": [0.25, -1.0],
        "a.bool": [True, False, True],
        "a.str": ["a", "", "ünï"],
        "a.u8": [0, 7, 255],
        "a.u64": [2**64 - 1, 0],
        "a.f64": [math.e],
        "a.nested": [[1, 2], [3]],
    }
    assert header.metadata == expected
    assert type(header.metadata["t.true"]) is bool and type(header.metadata["t.u8"]) is int
    assert list(header.metadata) == [key for key in reader.fields if not key.startswith("GGUF.")]
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key != "a.nested":  # gguf-py flattens nested arrays
            assert header.metadata[key] == field.contents(), key
    assert reader.fields["a.nested"].contents() == [1, 2, 3]

    assert header.version == 3
    assert header.data_offset == reader.data_offset
    assert list(header.tensors) == [tensor.name for tensor in reader.tensors]
    for tensor in reader.tensors:
        ours = header.tensors[tensor.name]
        assert ours.shape == tuple(int(dim) for dim in tensor.shape)
        assert ours.ggml_type == int(tensor.tensor_type)
        assert header.data_offset + ours.offset == tensor.data_offset
    assert {name: (t.shape, t.ggml_type) for name, t in header.tensors.items()} == {
        "vec": ((7,), 0),
        "mat": ((5, 3), 0),
        "cube": ((4, 3, 2), 1),
        "hyper": ((4, 3, 2, 1), 24),
        "quant": ((64, 2), 8),
    }


def test_file_without_tensors_and_version_2(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "empty.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    header = read_gguf_header(path)
    assert header == GgufHeader(3, {"general.architecture": "gemma3"}, {}, path.stat().st_size)

    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", 2)  # v2 and v3 share the little-endian layout
    path.write_bytes(bytes(data))
    assert read_gguf_header(path).version == 2


# --- corrupt files ------------------------------------------------------------------------------------------------


def _s(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def _kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def _ti(name: str, shape: tuple[int, ...], ggml_type: int = 0, offset: int = 0) -> bytes:
    dims = struct.pack(f"<I{len(shape)}Q", len(shape), *shape)
    return _s(name) + dims + struct.pack("<IQ", ggml_type, offset)


def _gguf(
    kvs: list[bytes],
    tensors: list[bytes] = [],  # noqa: B006
    *,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    data: bytes = b"",
) -> bytes:
    """A hand-built file, for the corruptions gguf-py's writer refuses to make."""
    head = b"GGUF" + struct.pack(
        "<IQQ", 3, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % 32 if tensors else 0) + data


ARCH = _kv("general.architecture", 8, _s("llama"))
U32 = struct.pack("<I", 1)


def _load_error(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(data)
    with pytest.raises(LoadError) as info:
        read_gguf_header(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_hand_built_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "ok.gguf"
    path.write_bytes(_gguf([ARCH, _kv("x", 4, U32)], [_ti("w", (8, 2))], data=bytes(64)))
    header = read_gguf_header(path)
    assert header.metadata == {"general.architecture": "llama", "x": 1}
    assert header.tensors["w"].shape == (8, 2)


def test_missing_path_directory_and_fifo(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="not found"):
        read_gguf_header(tmp_path / "absent.gguf")
    with pytest.raises(LoadError, match="not a file"):
        read_gguf_header(tmp_path)
    if sys.platform != "win32":
        fifo = tmp_path / "fifo.gguf"
        os.mkfifo(fifo)
        with pytest.raises(LoadError, match="not a file"):  # opening it would block
            read_gguf_header(fifo)


@pytest.mark.parametrize("data", [b"", b"GG", b"GGUF", b"GGUF\x03\x00\x00"], ids=["empty", "2", "4", "7"])
def test_too_short(tmp_path: Path, data: bytes) -> None:
    assert "too short" in _load_error(tmp_path, data)


def test_bad_magic(tmp_path: Path) -> None:
    assert "magic b'GGML'" in _load_error(tmp_path, b"GGML" + _gguf([ARCH])[4:])
    assert "not a GGUF file" in _load_error(tmp_path, b"<html><body>404</body></html>")


@pytest.mark.parametrize("version", [0, 1, 4, 2**32 - 1])
def test_unsupported_version(tmp_path: Path, version: int) -> None:
    data = _gguf([ARCH])
    message = _load_error(tmp_path, data[:4] + struct.pack("<I", version) + data[8:])
    assert f"unsupported GGUF version {version}" in message


def test_big_endian_file(tmp_path: Path) -> None:
    data = _gguf([ARCH])
    assert "big-endian" in _load_error(tmp_path, data[:4] + struct.pack(">I", 3) + data[8:])


HUGE = 2**63
CORRUPT = {
    "kv count": _gguf([ARCH], n_kv=2**64 - 1),
    "tensor count": _gguf([ARCH], n_tensors=HUGE),
    "more kvs than present": _gguf([ARCH], n_kv=3),
    "key length": _gguf([struct.pack("<Q", HUGE) + b"key"]),
    "key length one past the end": _gguf([struct.pack("<Q", 200) + b"k" * 100]),
    "string length": _gguf([_kv("s", 8, struct.pack("<Q", 2**64 - 1) + b"abc")]),
    "array length": _gguf([_kv("a", 9, struct.pack("<IQ", 0, HUGE))]),
    "u64 array length": _gguf([_kv("a", 9, struct.pack("<IQ", 10, 2**61))]),
    "string array length": _gguf([_kv("a", 9, struct.pack("<IQ", 8, 2**60))]),
    "nested array length": _gguf([_kv("a", 9, struct.pack("<IQ", 9, 2**60))]),
    "deep nesting": _gguf([_kv("a", 9, struct.pack("<IQ", 9, 1) * 40 + struct.pack("<IQ", 4, 0))]),
    "tensor name length": _gguf([ARCH], [struct.pack("<Q", HUGE)]),
    "unknown value type": _gguf([_kv("x", 13, U32)]),
    "unknown element type": _gguf([_kv("x", 9, struct.pack("<IQ", 99, 1) + U32)]),
    "empty key": _gguf([_kv("", 4, U32)]),
    "duplicate key": _gguf([_kv("x", 4, U32), _kv("x", 4, U32)]),
    "alignment type": _gguf([_kv("general.alignment", 10, struct.pack("<Q", 32))]),
    "alignment not a power of two": _gguf([_kv("general.alignment", 4, struct.pack("<I", 48))]),
    "alignment zero": _gguf([_kv("general.alignment", 4, struct.pack("<I", 0))]),
    "five dimensions": _gguf([ARCH], [_ti("w", (1, 1, 1, 1, 1))], data=bytes(32)),
    "negative dimension": _gguf([ARCH], [_ti("w", (HUGE,))]),
    "element count overflow": _gguf([ARCH], [_ti("w", (2**32, 2**32))]),
    "duplicate tensor": _gguf([ARCH], [_ti("w", (8,)), _ti("w", (8,), offset=32)], data=bytes(64)),
    "tensor data past the end": _gguf([ARCH], [_ti("w", (8,), offset=32)], data=bytes(32)),
    "partial block": _gguf([ARCH], [_ti("w", (33,), ggml_type=8)], data=bytes(64)),
}


@pytest.mark.parametrize("data", list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupt_header(tmp_path: Path, data: bytes) -> None:
    _load_error(tmp_path, data)


def test_truncated_at_every_byte(small_file: Path, tmp_path: Path) -> None:
    import gguf

    data = small_file.read_bytes()
    reader = gguf.GGUFReader(small_file)
    end = max(tensor.data_offset + tensor.n_bytes for tensor in reader.tensors)
    assert read_gguf_header(small_file).data_offset < end <= len(data)
    for cut in range(end):
        _load_error(tmp_path, data[:cut])
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:end])  # the last tensor's padding is not needed
    assert read_gguf_header(path).tensors.keys() == {tensor.name for tensor in reader.tensors}


def test_truncated_gemma(model_path: Path, tmp_path: Path) -> None:
    data_offset = read_gguf_header(model_path).data_offset
    with model_path.open("rb") as handle:
        head = handle.read(data_offset + 4096)
    for cut in (0, 5, 8, 23, 24, 100, 4096, 65536, 1_000_000, data_offset - 1, data_offset, data_offset + 4096):
        message = _load_error(tmp_path, head[:cut])
        assert "too short" in message or "truncated" in message, message


def test_random_corruption_raises_only_load_error(small_file: Path, tmp_path: Path) -> None:
    """Flipped bytes anywhere in the header: a header or a LoadError, never another exception or a hang."""
    data = small_file.read_bytes()
    header_end = read_gguf_header(small_file).data_offset
    rng = np.random.default_rng(0)
    path = tmp_path / "fuzz.gguf"
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        corrupt = bytearray(data)
        for position in rng.integers(0, header_end, size=int(rng.integers(1, 4))):
            corrupt[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(corrupt))
        try:
            read_gguf_header(path)
        except LoadError:
            outcomes["error"] += 1
        else:
            outcomes["ok"] += 1
    assert outcomes["error"] > 100


# --- the LoRA helper (tests/lora_gguf.py) -------------------------------------------------------------------------


def test_lora_file_layout(model_path: Path, tmp_path: Path) -> None:
    path = write_lora(tmp_path / "lora.gguf", model_path, rank=3, alpha=6.0, layers=range(2), shape_offset=0)
    header = read_gguf_header(path)
    assert header.metadata["general.type"] == "adapter"
    assert header.metadata["general.architecture"] == "gemma3"
    assert header.metadata["adapter.type"] == "lora"
    assert header.metadata["adapter.lora.alpha"] == 6.0
    assert {name: t.shape for name, t in header.tensors.items()} == {
        f"blk.{layer}.{target}.weight.{ab}": shape
        for layer in range(2)
        for target, n_out in (("attn_q", 1024), ("attn_v", 256))
        for ab, shape in (("lora_a", (640, 3)), ("lora_b", (3, n_out)))
    }
    assert read_gguf_header(write_lora(path, model_path, arch="llama")).metadata["general.architecture"] == "llama"
    assert read_gguf_header(write_lora(path, model_path, shape_offset=2)).tensors[
        "blk.0.attn_q.weight.lora_a"
    ].shape == (642, 4)
    with pytest.raises(ValueError, match="no matrix"):
        write_lora(path, model_path, targets=("attn_qkv",))


@pytest.fixture(scope="module")
def base_llm(model_path: Path) -> Iterator[Any]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=512, verbose=False, seed=0)
    yield llm
    llm.close()


def _greedy(llm: Any) -> str:
    llm.reset()  # a reused Llama decodes only the unseen suffix, which changes the floating-point path
    text: str = llm(PROMPT, max_tokens=16, temperature=0)["choices"][0]["text"]
    return text


def _last_logits(llm: Any) -> Any:
    llm.reset()
    llm.eval(llm.tokenize(PROMPT.encode()))
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


def test_lora_changes_greedy_output(model_path: Path, tmp_path: Path, base_llm: Any) -> None:
    import llama_cpp

    lora = write_lora(tmp_path / "lora.gguf", model_path)
    base = _greedy(base_llm)
    llm = llama_cpp.Llama(model_path=str(model_path), lora_path=str(lora), n_ctx=512, verbose=False, seed=0)
    try:
        adapted = _greedy(llm)
        assert adapted != base
        assert _greedy(llm) == adapted
        assert np.isfinite(_last_logits(llm)).all()
    finally:
        llm.close()


@pytest.mark.parametrize("kwargs", [{"arch": "llama"}, {"shape_offset": 1}], ids=["arch", "shape"])
def test_mismatched_lora_is_refused(model_path: Path, tmp_path: Path, base_llm: Any, kwargs: dict[str, Any]) -> None:
    """Through the C API: ``Llama(lora_path=...)`` in 0.3.36 misses the NULL (``is None`` on a ctypes pointer)
    and crashes in the first decode."""
    import llama_cpp

    good = write_lora(tmp_path / "good.gguf", model_path)
    bad = write_lora(tmp_path / "bad.gguf", model_path, **kwargs)
    adapter = llama_cpp.llama_adapter_lora_init(base_llm._model.model, str(good).encode())
    assert adapter
    llama_cpp.llama_adapter_lora_free(adapter)
    assert not llama_cpp.llama_adapter_lora_init(base_llm._model.model, str(bad).encode())
