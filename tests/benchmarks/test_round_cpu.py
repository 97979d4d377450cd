"""``benchmarks/round_cpu.py`` sorts perf samples by whose work they are: each category
from stacks as ``perf script`` prints them (innermost frame first)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "round_cpu.py"
PY = "(/usr/lib/libpython3.11.so.1.0)"
GRPC = "(/venv/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so)"
LIBC = "(/usr/lib/x86_64-linux-gnu/libc.so.6)"
KERNEL = "([kernel.kallsyms])"
NUMPY = "(/venv/numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so)"
COPY = f"16db75 __memcpy_avx512_unaligned_erms (inlined) {LIBC}"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("round_cpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["round_cpu"] = module
    spec.loader.exec_module(module)
    return module


round_cpu = _load()


@pytest.mark.parametrize(
    ("frames", "category"),
    [
        ([f"1 pv_native_safe_halt {KERNEL}", f"2 default_idle {KERNEL}"], "idle"),
        ([COPY, f"3 stringlib_bytes_join {PY}", f"4 [unknown] {GRPC}"], "grpc-receive-copy"),
        ([COPY, f"3 PyBytes_FromStringAndSize {PY}", f"4 [unknown] {GRPC}"], "grpc-receive-copy"),
        ([COPY, f"3 stringlib_bytes_join {PY}", f"4 _PyEval_EvalFrameDefault {PY}"],
         "consortium-encode-copy"),
        ([COPY, f"3 copy_single (inlined) {PY}", f"4 memory_ass_sub {PY}"],
         "consortium-reassembly-copy"),
        ([COPY, f"3 _contig_to_contig {NUMPY}", f"4 raw_array_assign_array {NUMPY}"],
         "app-stage-copy"),
        ([COPY, f"3 [unknown] {GRPC}"], "grpc-copy"),
        ([COPY, f"3 somewhere_else {PY}"], "other"),
        (["5 crc32_gzip_refl_by16_10.fold_and_prefetch_256_B_loop (/venv/isal_zlib.so)"], "crc"),
        ([f"6 smaps_account {KERNEL}", f"7 show_smaps_rollup {KERNEL}"], "sampler"),
        ([f"8 _copy_to_iter {KERNEL}", f"9 tcp_recvmsg {KERNEL}"], "kernel-copy"),
        ([f"a FLOAT_add_X86_V3 {NUMPY}"], "numpy"),
        ([f"b [unknown] {GRPC}"], "grpc"),
        ([f"c handle_softirqs {KERNEL}"], "kernel"),
        ([f"d _int_malloc {LIBC}"], "malloc"),
        ([f"e _PyEval_EvalFrameDefault {PY}"], "python"),
    ],
)  # fmt: skip
def test_each_kind_of_sample_lands_in_its_category(frames: list[str], category: str) -> None:
    assert category in round_cpu.CATEGORIES
    assert round_cpu.classify(frames) == category


def test_perf_script_output_is_split_into_samples_of_frames() -> None:
    script = (
        f"python 31435 \n\t  515546 FLOAT_add_X86_V3 {NUMPY}\n\t  2b5e74 loop {NUMPY}\n\n"
        f"swapper 0 \n\t  1 pv_native_safe_halt {KERNEL}\n\n\n"
    )
    samples = round_cpu.split_samples(script)
    assert samples == [
        [f"515546 FLOAT_add_X86_V3 {NUMPY}", f"2b5e74 loop {NUMPY}"],
        [f"1 pv_native_safe_halt {KERNEL}"],
    ]
    assert [round_cpu.classify(frames) for frames in samples] == ["numpy", "idle"]
