"""Which torch device a run uses, and what it can do: device names resolved once, bf16 checked against hardware.

Imports no other crl module but crl.core, so learners (crl.offpolicy, agents/hypercrl.py) check their
precision here without importing the run's configuration.
"""

from __future__ import annotations

from crl.core import UsageError


def resolve_device(name: str):
    """``auto`` → cuda when available, else cpu; ``cuda[:i]`` must exist."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"device '{name}' requested but CUDA is not available here; allowed: auto, cpu")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UsageError(f"device '{name}' does not exist; this machine has cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device(name)
    raise UsageError(f"unknown device '{name}'; allowed: auto, cpu, cuda, cuda:<index>")


def native_bf16(device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16, or a CPU with
    AVX512-BF16 or AMX (oneDNN's own test). Elsewhere torch emulates bf16 in software."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return True


def require_native_bf16(setting: str, device) -> None:
    """Stops a bf16 ``setting`` on a device without bf16 hardware: there torch's emulation is no speed-up but a
    slow-down (an AVX2 EPYC: SAC's bf16 update 20× slower than fp32, a 4000×200×200 matmul 13× slower)."""
    if not native_bf16(device):
        import torch

        where = f"this CPU ({torch.backends.cpu.get_cpu_capability()})" if device.type == "cpu" else str(device)
        raise UsageError(f"{setting} needs bf16 hardware (a CPU with AVX512-BF16 or AMX, or a GPU), which {where} "
                         f"lacks: it would run slower than fp32 here; use fp32")
