"""LoRA adapter GGUF files for tests: random low-rank deltas on a real model's weights, in llama.cpp's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oxillama_py.llama.gguf_file import read_gguf_header

DEFAULT_SCALE = 0.05


def write_lora(
    path: Path,
    model_path: Path,
    *,
    rank: int = 4,
    alpha: float = 8.0,
    targets: tuple[str, ...] = ("attn_q", "attn_v"),
    layers: range | None = None,
    seed: int = 0,
    scale: float = DEFAULT_SCALE,
    arch: str | None = None,
    shape_offset: int = 0,
) -> Path:
    """An F32 adapter for ``blk.N.<target>.weight`` of every layer in ``layers`` (default: all of the model's).

    ``lora_a`` and ``lora_b`` are standard normal times ``scale``, so the delta of a weight is about
    ``alpha / rank * scale**2 * sqrt(rank)`` per entry (0.01 by default, a quarter of the spread of Gemma 3
    270M's attention weights): enough to change its greedy output, little enough to keep it fluent and finite.
    ``arch`` writes another architecture and ``shape_offset`` adds to ``lora_a``'s input dimension, both to
    make adapters llama.cpp refuses to load.
    """
    import gguf

    header = read_gguf_header(model_path)
    model_arch = header.metadata["general.architecture"]
    assert isinstance(model_arch, str)
    if layers is None:
        n_layers = header.metadata[f"{model_arch}.block_count"]
        assert isinstance(n_layers, int)
        layers = range(n_layers)

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch if arch is not None else model_arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for layer in layers:
        for target in targets:
            name = f"blk.{layer}.{target}.weight"
            base = header.tensors.get(name)
            if base is None or len(base.shape) != 2:
                raise ValueError(f"{model_path} has no matrix {name}")
            n_in, n_out = base.shape[0], base.shape[1]
            # ggml ne=[n_in, rank] and ne=[rank, n_out]; numpy shapes are ne reversed
            lora_a = rng.standard_normal((rank, n_in + shape_offset)) * scale
            lora_b = rng.standard_normal((n_out, rank)) * scale
            writer.add_tensor(f"{name}.lora_a", lora_a.astype(np.float32))
            writer.add_tensor(f"{name}.lora_b", lora_b.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
