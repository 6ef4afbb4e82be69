"""The line every benchmark prints beside its figures: which CPU measured them, and how busy it was.

Speed depends on the CPU model and its vector units (AVX2, AVX-512, AMX give fp32/bf16/int8 paths of
very different speed), and on the load: a figure without this line cannot be compared with another.
"""

from __future__ import annotations

import os
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def cpu_line(load: bool = True) -> str:
    """``model, N cores; flags: ...`` (and the load averages, with ``load``), from /proc/cpuinfo."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in flags if f in FLAGS]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    line = f"{model}, {cores} cores; flags: {' '.join(wanted) or 'none of avx2/avx512/amx'}"
    if load:
        averages = " ".join(f"{x:.2f}" for x in os.getloadavg())
        line = f"cpu: {line}; load average {averages}"
    return line
