"""The GPU check script (benchmarks/gpu_check.py) runs on the CPU: a short smoke run, so it is
known to work before a GPU is ever lent (issue 19 item 4)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_on_cpu(data_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "gpu.md"
    assert mod.main(["--device", "cpu", "--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| norman19_devel") or line.startswith("| synth")]
    models = {r.split("|")[2].strip() for r in rows}
    assert models == {"pdae", "samsvae", "sccvae", "fcr", "pdae_profile"}
    assert all(r.rstrip().endswith("| ok |") for r in rows), text
    assert any("| bf16 |" in r for r in rows) and "device: cpu" in text
    # every round trip predicted the same cells
    assert all(float(r.split("|")[8]) == 0.0 for r in rows)
