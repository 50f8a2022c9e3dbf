"""What CPU this is: its model name (printed beside every timing) and whether it has the AMX bfloat16 units.

Read from /proc/cpuinfo (Linux); elsewhere the model is `platform.processor()` and the flags are unknown (empty).
"""

from __future__ import annotations

import functools
import platform

CPUINFO = "/proc/cpuinfo"


@functools.cache
def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open(CPUINFO, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's block
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name, as lscpu prints it ("Intel(R) Xeon(R) Processor", "AMD EPYC 7B13", ...)."""
    return _cpuinfo_fields().get("model name") or platform.processor() or "unknown"


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (avx2, avx512f, amx_bf16, ...); empty where they cannot be read."""
    return frozenset(_cpuinfo_fields().get("flags", "").split())


def has_amx_bf16() -> bool | None:
    """Whether the CPU has AMX's bfloat16 tiles (None: unknown, no /proc/cpuinfo flags). Without them, oneDNN runs a
    bfloat16 convolution by converting to float32 and back, slower than float32 itself (docs/benchmarks.md)."""
    flags = cpu_flags()
    return ("amx_bf16" in flags) if flags else None
