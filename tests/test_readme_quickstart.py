"""The README's Python quick start, copied into a script and run in a terminal, shows a training
progress bar (and runs to the end). Only the number of training steps is cut, for time."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT = 'model.fit(adata, holdout=["KLF1+MAP2K6"])'


def quick_start() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start in Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert FIT in block, "the README's quick start no longer fits this way: update this test"
    return block.replace(FIT, FIT[:-1] + ", max_steps=40)")


def run_in_terminal(script: Path, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run ``script`` with stdout and stderr on a pseudo-terminal; return its exit code and output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=env, stdout=slave, stderr=slave,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=300), out.decode("utf-8", "replace")


def test_readme_quick_start_shows_a_progress_bar(tmp_path, data_dir):
    script = tmp_path / "quick_start.py"
    script.write_text(quick_start())
    env = {**os.environ, "PDAE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    rc, out = run_in_terminal(script, tmp_path, env)
    assert rc == 0, out[-3000:]
    assert re.search(r"\d+%\|.*\|\s*\d+/\d+", out), f"no progress bar in:\n{out[-2000:]}"  # tqdm's bar
    assert "KLF1+MAP2K6" in out and "span" in out  # the extrapolation message printed at the end
    assert (tmp_path / "my_checkpoint" / "model.safetensors").exists()
