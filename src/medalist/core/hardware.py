"""What this machine is, as the presets see it: cores, native bf16 on the CPU, and each GPU's
memory and bf16. Read without importing torch (`/proc/cpuinfo`, `nvidia-smi`), so the planner
stays quick. `MEDALIST_HARDWARE` (JSON: {"cores": 8, "cpu_bf16": false, "gpus": [{"name": "A100",
"memory_gb": 80, "bf16": true}]}) describes another machine instead: how tests and `make plan`
show what a preset resolves to elsewhere."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess

from medalist.core.config import UserError


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float
    bf16: bool  # compute capability 8.0 or later (Ampere on)


@dataclasses.dataclass(frozen=True)
class Machine:
    cores: int
    cpu_bf16: bool  # AVX512-BF16 or AMX: bf16 runs natively, not emulated
    gpus: tuple[Gpu, ...] = ()

    def summary(self) -> str:
        cpu = f"{self.cores} cores{' with native bf16' if self.cpu_bf16 else ''}"
        if not self.gpus:
            return f"CPU only, {cpu}"
        kinds = sorted({f"{g.name} ({g.memory_gb:.0f} GB{', bf16' if g.bf16 else ', no bf16'})" for g in self.gpus})
        return f"{len(self.gpus)} GPU(s): {', '.join(kinds)}; {cpu}"


def _cpu_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _gpus() -> tuple[Gpu, ...]:
    if not shutil.which("nvidia-smi"):
        return ()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        try:
            name, mem, cap = (p.strip() for p in line.split(","))
            gpus.append(Gpu(name, float(mem) / 1024, float(cap) >= 8.0))
        except ValueError:
            continue
    return tuple(gpus)


def describe() -> Machine:
    given = os.environ.get("MEDALIST_HARDWARE")
    if given:
        try:
            d = json.loads(given)
            return Machine(int(d["cores"]), bool(d.get("cpu_bf16", False)),
                           tuple(Gpu(str(g.get("name", "GPU")), float(g["memory_gb"]), bool(g.get("bf16", False)))
                                 for g in d.get("gpus", [])))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"MEDALIST_HARDWARE: expected JSON like {{\"cores\": 8, \"cpu_bf16\": false, \"gpus\": "
                            f"[{{\"name\": \"A100\", \"memory_gb\": 80, \"bf16\": true}}]}} ({e})") from None
    return Machine(os.cpu_count() or 1, _cpu_bf16(), _gpus())
