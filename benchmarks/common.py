"""What the benchmark scripts share: the project root, a hardware line, and appending a report
section. Run the scripts as modules from the project root (``python -m benchmarks.<script>``).
Result tables of models are made by ``mmrec experiment`` (configs/experiments/), not here."""

from __future__ import annotations

import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware(device: str = "cpu") -> str:
    """One line: CPU, visible cores, torch version and threads, and the GPU when used."""
    import torch

    line = (
        f"CPU {cpu_name()}, {os.cpu_count()} logical cores visible, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}"
    )
    if str(device).startswith("cuda") and torch.cuda.is_available():
        line += f", GPU {torch.cuda.get_device_name()}"
    return line


def append_section(out: str | Path, header: str, text: str) -> Path:
    """Append ``text`` to the markdown report ``out``, starting it with ``header`` if new."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(header.rstrip("\n") + "\n")
    with out.open("a") as f:
        f.write(text.rstrip("\n") + "\n")
    return out
