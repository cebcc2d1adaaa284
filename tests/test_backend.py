"""llama.cpp's process-wide set-up: the AMX guard, and its log routed to ``logging`` at honest levels."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from oxillama_py import Engine, EngineConfig
from oxillama_py.llama import backend

NATIVE_AMX_BUILD = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 |"
PORTABLE_BUILD = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | OPENMP = 1 | REPACK = 1 |"


@pytest.fixture
def fresh_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(backend.EXTRA_BUFFERS_ENV, raising=False)
    backend.use_extra_buffers.cache_clear()
    yield
    backend.use_extra_buffers.cache_clear()


def write_cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 {flags}\n\n", encoding="utf-8")
    return path


def test_amx_in_build() -> None:
    assert backend.amx_in_build(NATIVE_AMX_BUILD)
    assert not backend.amx_in_build(PORTABLE_BUILD)


def test_cpu_has_amx(tmp_path: Path) -> None:
    assert backend.cpu_has_amx(write_cpuinfo(tmp_path, "avx512f amx_tile amx_int8 amx_bf16"))
    assert not backend.cpu_has_amx(write_cpuinfo(tmp_path, "avx512f avx512_vnni"))
    assert backend.cpu_has_amx(tmp_path / "missing")  # unreadable: assume the worst


@pytest.mark.parametrize(
    ("info", "flags", "expected"),
    [
        (NATIVE_AMX_BUILD, "amx_tile amx_int8", False),  # the crashing combination
        (NATIVE_AMX_BUILD, "avx512f", True),  # AMX kernels present but never reached
        (PORTABLE_BUILD, "amx_tile amx_int8", True),
        (PORTABLE_BUILD, "avx512f", True),
    ],
)
def test_guard_turns_extra_buffers_off_only_for_amx_builds_on_amx_cpus(
    fresh_guard: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, info: str, flags: str, expected: bool
) -> None:
    monkeypatch.setattr(backend.llama_cpp, "llama_print_system_info", lambda: info.encode())
    cpuinfo, real = write_cpuinfo(tmp_path, flags), backend.cpu_has_amx
    monkeypatch.setattr(backend, "cpu_has_amx", lambda: real(cpuinfo))
    assert backend.use_extra_buffers() is expected


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("0", False)])
def test_environment_overrides_the_guard(
    fresh_guard: None, monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    monkeypatch.setattr(backend.llama_cpp, "llama_print_system_info", lambda: NATIVE_AMX_BUILD.encode())
    monkeypatch.setattr(backend, "cpu_has_amx", lambda: not expected)
    monkeypatch.setenv(backend.EXTRA_BUFFERS_ENV, value)
    assert backend.use_extra_buffers() is expected


def test_real_build_and_machine(fresh_guard: None, model_path: Path) -> None:
    """On this machine's llama-cpp-python the guess follows the real build, and a model loads and runs."""
    info = llama_cpp.llama_print_system_info().decode()
    assert backend.use_extra_buffers() is not (backend.amx_in_build(info) and backend.cpu_has_amx())
    with Engine(EngineConfig(model_path, n_ctx=256)) as engine:
        assert engine.generate("1, 2, 3, 4,", max_tokens=4, temperature=0).startswith(" 5")


def test_a_model_load_logs_no_warning(model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """llama.cpp's notices on every load (vocabulary, SWA cache) are INFO: a WARNING should mean something."""
    caplog.set_level(logging.INFO, logger="oxillama_py")
    with Engine(EngineConfig(model_path)) as engine:
        engine.load_model()
    warnings = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and backend.EXTRA_BUFFERS_ENV not in r.getMessage()  # AMX builds only
    ]
    assert warnings == []
    notices = [r.getMessage() for r in caplog.records if r.name == "oxillama_py.llama" and r.levelno == logging.INFO]
    assert any(m.partition(": ")[2].startswith(backend.BENIGN_NOTICES) for m in notices)  # demoted, not dropped
