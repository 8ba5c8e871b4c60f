"""The software and hardware a result was computed with, and which results were computed alike.

Two runs of the same submission on the same task agree bit for bit only in the same environment: the same
packages (requirements.lock pins them; `packages_sha256` says what was actually installed), the same kernel
path (CPU capability, e.g. AVX-512 with or without BF16/AMX units, or the GPU and its compute capability)
and the same thread count (parallel reductions split by thread). Across environments numbers move in their
last digits (docs/protocol-choices.md, "Tolerances"), so the leaderboard marks rows whose environment differs
from the task's reference row.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.result import Provenance

# Provenance fields compared between rows. Old results lack the newer ones: a field is compared only where
# both rows record it. The lock digest is left out (what was installed is packages_sha256), and so is the CPU
# model (the kernel path, not the model name, decides the arithmetic).
COMPARED = ("packages_sha256", "torch", "transformers", "device", "kernel", "threads")
# CPU features that select other kernels for the same torch capability level (bf16 dot products, AMX tiles).
_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
LOCK_FILE = Path(__file__).resolve().parents[1] / "requirements.lock"


def installed_packages(dists: Sequence[tuple[str, str]] | None = None) -> list[str]:
    """The sorted `name==version` lines of the installed distributions (a `pip freeze` without paths), harness
    itself left out: its version and install path say nothing about the arithmetic."""
    from packaging.utils import canonicalize_name

    if dists is None:
        from importlib.metadata import distributions

        dists = [(d.metadata["Name"] or "", d.version) for d in distributions()]
    return sorted({f"{canonicalize_name(n)}=={v}" for n, v in dists if n and canonicalize_name(n) != "harness"})


def packages_digest(lines: Sequence[str]) -> str:
    """sha256 over package lines (`installed_packages`'s) joined by newlines."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def package_changes(a: Sequence[str], b: Sequence[str]) -> list[str]:
    """How package list `a` differs from the reference `b`: `name b-version → a-version`, `+name version` (only
    in a), `-name version` (only in b), sorted by name."""
    va = dict(line.split("==", 1) for line in a if "==" in line)
    vb = dict(line.split("==", 1) for line in b if "==" in line)
    out = []
    for name in sorted(set(va) | set(vb)):
        if name not in vb:
            out.append(f"+{name} {va[name]}")
        elif name not in va:
            out.append(f"-{name} {vb[name]}")
        elif va[name] != vb[name]:
            out.append(f"{name} {vb[name]} → {va[name]}")
    return out


def lock_digest(path: Path = LOCK_FILE) -> str:
    """sha256 of the checkout's requirements.lock; empty where harness runs from an install without one."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def cpu_info(cpuinfo: str | None = None) -> tuple[str, list[str]]:
    """(CPU model name, the kernel-selecting flags it has) from /proc/cpuinfo text ("" and [] elsewhere)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    if not model:
        model = platform.processor()
    return model, [f for f in _CPU_FLAGS if f in flags]


def cpu_description() -> str:
    """lscpu's model name with family/model and the vector extensions that decide CPU throughput, e.g. "AMD EPYC
    (family 25 model 1, AVX2, KVM guest)" (a VM may hide the name): the key under which throughput is recorded."""
    try:
        info = {}
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"
    flags = set(info.get("Flags", "").split())
    ext = [name for flag, name in (("avx512f", "AVX-512"), ("amx_bf16", "AMX-BF16"), ("avx2", "AVX2")) if flag in flags]
    if "AVX-512" in ext and "AVX2" in ext:
        ext.remove("AVX2")
    out = info.get("Model name") or platform.processor() or "unknown CPU"
    if info.get("CPU family") and info.get("Model"):
        out += f" (family {info['CPU family']} model {info['Model']}"
        guest = f", {info['Hypervisor vendor']} guest" if info.get("Hypervisor vendor") else ""
        out += (", " + ", ".join(ext) if ext else "") + guest + ")"
    return out


def kernel_path(device: Any, cpuinfo: str | None = None) -> str:
    """Which kernels compute the numbers: `cuda:<name> sm_<major><minor>` on a GPU; on a CPU, torch's
    dispatch level (DEFAULT, AVX2, AVX512...) and the flags that add bf16/AMX paths, e.g. `cpu:AVX512+amx_bf16`."""
    import torch

    dev = torch.device(str(device))
    if dev.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(dev)
        return f"cuda:{torch.cuda.get_device_name(dev)} sm_{major}{minor}"
    if dev.type != "cpu":
        return dev.type
    _, flags = cpu_info(cpuinfo)
    return "cpu:" + "+".join([torch.backends.cpu.get_cpu_capability(), *flags])


def capture(device: Any) -> dict[str, Any]:
    """The environment fields of a result's provenance (harness/result.py `Provenance`)."""
    import torch

    model, _ = cpu_info()
    packages = installed_packages()
    return {"lock_sha256": lock_digest(), "packages_sha256": packages_digest(packages),
            "packages": packages, "cpu": model, "kernel": kernel_path(device), "threads": torch.get_num_threads()}


def compared(provenance: Provenance) -> dict[str, str]:
    """The recorded values of the COMPARED fields (empty and zero mean "not recorded")."""
    return {k: str(getattr(provenance, k)) for k in COMPARED if getattr(provenance, k) not in (None, "", 0)}


def differences(a: Mapping[str, str], b: Mapping[str, str]) -> list[str]:
    """Fields that both environments record with different values, in COMPARED order."""
    return [k for k in COMPARED if k in a and k in b and a[k] != b[k]]


def reference_index(methods: Sequence[str], environments: Sequence[Mapping[str, str]],
                    dates: Sequence[str]) -> int | None:
    """Which row is the task's reference environment: its `top-tokens` row (every task commits that
    baseline; the oldest if several), else a row of the environment most rows share (ties: the oldest).
    None when there are no rows."""
    if not methods:
        return None
    order = sorted(range(len(methods)), key=lambda i: (dates[i], i))
    top = [i for i in order if methods[i] == "top-tokens"]
    if top:
        return top[0]
    counts = Counter(tuple(sorted(environments[i].items())) for i in order)
    best = max(counts.values())
    return next(i for i in order if counts[tuple(sorted(environments[i].items()))] == best)
