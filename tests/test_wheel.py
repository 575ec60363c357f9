"""The product in the wheel (issue 18 part 1): ``pip wheel .`` ships the library, the ``pdae``
command, the dashboard (app.py, pages/, its .streamlit/config.toml) and the bundled demo checkpoint
with its shipped cell map, and a fresh install of that wheel runs ``pdae dashboard`` and the README's
``pdae predict`` example from a folder outside the repository.

The wheel is built offline (``--no-build-isolation``) from a copy of the working tree (the files git
tracks or would track), so the build writes nothing into the clone. It is installed with
``--no-deps --ignore-installed`` into a fresh venv outside the repository that sees this Python's
packages (``--system-site-packages``: torch, streamlit...), and every check asserts that the code
and files it used are the venv's, not the clone's (this Python may hold an editable install of it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from pdae_core import cli
from pdae_core.app import app_script, demo_checkpoint
from pdae_core.cli import dashboard

ROOT = Path(__file__).resolve().parents[1]
APP = "pdae_core/app/"
MAX_WHEEL_MB = 24  # the demo checkpoints: one network ~3 MB, an ensemble of 5 ~16 MB; more means something else got in


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 180), **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def listed(*paths: str) -> list[str]:
    """The files of the working tree (under ``paths``) that git tracks or would track, relative to the
    root; a tracked file deleted in the working tree is left out."""
    out = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths], cwd=ROOT).stdout
    return [rel for rel in out.split("\0") if rel and (ROOT / rel).is_file()]


def source_copy(dest: Path) -> Path:
    """The working tree as a clone would build it."""
    for rel in listed():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory, data_dir) -> SimpleNamespace:
    """The wheel built from the working tree, installed into a fresh venv; a working folder and the
    environment to run the venv's commands from it."""
    tmp = tmp_path_factory.mktemp("wheel")
    assert not tmp.resolve().is_relative_to(ROOT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PDAE_DATA_DIR=str(data_dir), PDAE_CACHE_DIR=str(tmp / "cache"))
    src = source_copy(tmp / "src")
    dist = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(dist), "."], cwd=src, env=env)
    (wheel,) = dist.glob("pdae_core-*.whl")

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], env=env)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    if sys.prefix != sys.base_prefix:  # this Python is itself a venv: let the new one see its packages too
        site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env=env)
        outer = [p for p in sys.path if p.endswith("site-packages")]
        (Path(site.stdout.strip()) / "_outer_site.pth").write_text("\n".join(outer) + "\n")
    run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index", "-q",
         str(wheel)], env=env)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    work = tmp / "work"
    work.mkdir()
    return SimpleNamespace(wheel=wheel, venv=venv.resolve(), python=python, pdae=bindir / "pdae", work=work,
                           env=env, cache=tmp / "cache")


# ---- the wheel's contents -------------------------------------------------------------------------
def test_the_wheel_ships_the_dashboard_and_the_demo(installed):
    with zipfile.ZipFile(installed.wheel) as z:
        names = set(z.namelist())
        shipped = {n: z.read(n) for n in names if n.startswith(APP + "checkpoints/")}
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "pdae = pdae_core.cli:main" in entry_points
    expected = {APP + "app.py", APP + ".streamlit/config.toml", APP + "__init__.py"}
    expected |= {APP + rel for rel in listed("pages", "checkpoints") if rel.endswith((".py", ".json", ".safetensors",
                                                                                      ".md"))}
    assert {APP + "pages/common.py", APP + "checkpoints/norman19_devel/model.safetensors"} <= expected
    assert expected <= names, sorted(expected - names)
    assert any(n.startswith(APP + "checkpoints/embeddings/") and n.endswith("reference.safetensors") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # the same bytes as the clone's (a checkpoint's digest covers its files)
    for name, data in shipped.items():
        assert hashlib.sha256(data).digest() == hashlib.sha256((ROOT / name[len(APP):]).read_bytes()).digest(), name
    assert installed.wheel.stat().st_size < MAX_WHEEL_MB * 2**20


# ---- the installed package -----------------------------------------------------------------------
CHECK_INSTALL = """
import json, sys
from pathlib import Path
import pdae_core as pc
from pdae_core.app import app_script, checkpoints_dir, demo_checkpoint
from pdae_core.data.datasets import load_dataset
from pdae_core.reference import cached_reference
from streamlit.testing.v1 import AppTest

model = pc.load_model(demo_checkpoint())
empty = Path(sys.argv[1])
ref = cached_reference(load_dataset("norman19_devel"), "condition", search=[checkpoints_dir() / "embeddings"],
                       cache_dir=empty)
at = AppTest.from_file(str(app_script()), default_timeout=120).run()
common = sys.modules["pages.common"]
print(json.dumps({
    "pdae_core": pc.__file__, "app": str(app_script()), "demo": str(demo_checkpoint()),
    "pages": common.__file__, "bundled": {k: str(v) for k, v in common.bundled_checkpoints().items()},
    "model": model.model_type,
    "map_fitted": empty.exists() and any(empty.iterdir()), "map_cells": int(ref.coords.shape[0]),
    "exceptions": [str(e.value) for e in at.exception], "errors": [e.value for e in at.error],
    "sidebar": " ".join(m.value for m in at.sidebar.markdown), "model_key": at.session_state["model_key"],
}))
"""


def test_installed_package_finds_its_app_demo_checkpoint_and_map(installed):
    out = run([str(installed.python), "-c", CHECK_INSTALL, str(installed.cache / "maps")], cwd=installed.work,
              env=installed.env).stdout
    got = json.loads(out.strip().splitlines()[-1])
    for key in ("pdae_core", "app", "demo", "pages"):  # the venv's files, not the clone's
        assert Path(got[key]).resolve().is_relative_to(installed.venv), (key, got[key])
    assert Path(got["bundled"]["norman19_devel"]).resolve() == Path(got["demo"]).resolve()
    assert got["model"] == "pdae"
    assert not got["map_fitted"] and got["map_cells"] > 0  # the shipped map was read, nothing was fitted
    # the packaged app runs its Data page on the demo data with the bundled model
    assert got["exceptions"] == [] and got["errors"] == []
    assert "bundled checkpoint norman19_devel" in got["sidebar"]
    assert got["model_key"] == "bundled:norman19_devel"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(url, timeout=5) as r:
        return r.status, r.read().decode("utf-8", "replace")


def test_pdae_dashboard_serves_the_packaged_app(installed):
    port = free_port()
    log = installed.work / "dashboard.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(installed.pdae), "dashboard", "--server.headless", "true", "--server.port",
                                 str(port)], cwd=installed.work, env=installed.env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        health, deadline = "", time.monotonic() + 60
        while health != "ok" and time.monotonic() < deadline and proc.poll() is None:
            try:
                health = fetch(f"http://localhost:{port}/_stcore/health")[1]
            except OSError:
                time.sleep(0.3)
        assert health == "ok", f"no healthy dashboard on port {port}:\n{log.read_text()[-3000:]}"
        status, page = fetch(f"http://localhost:{port}/")
        assert status == 200 and "<title>" in page and "<script" in page
        assert f"localhost:{port}" in log.read_text()
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        if cmdline.exists():  # Linux: pdae became `python -m streamlit run <the venv's app.py> ...`
            argv = cmdline.read_bytes().decode().rstrip("\0").split("\0")
            app = Path(argv[argv.index("run") + 1])
            assert app.name == "app.py" and app.resolve().is_relative_to(installed.venv), argv
            assert argv[-4:] == ["--server.headless", "true", "--server.port", str(port)], argv
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def readme_predict_example() -> str:
    """The ``pdae predict`` line of the README's install instructions."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line for b in blocks for line in b.replace("\\\n", " ").splitlines() if line.startswith("pdae predict")]
    assert len(lines) == 1, lines
    return lines[0].split("  #")[0]


def test_the_readme_predict_example_runs_from_the_install(installed):
    example = readme_predict_example()
    out = re.search(r"--out (\S+)", example).group(1)
    run(["bash", "-c", example], cwd=installed.work, env=installed.env)
    import anndata as ad

    pred = ad.read_h5ad(installed.work / out)
    targets = re.findall(r"--target (\S+)", example)
    assert pred.n_obs > 0 and set(pred.obs["target"].astype(str)) == set(targets)
    ckpt = Path(pred.uns["pdae_prediction"]["checkpoint"])
    assert ckpt.is_relative_to(installed.venv) and ckpt.name == "norman19_devel"


# ---- pdae dashboard, in this process ---------------------------------------------------------------
class Started(Exception):
    """Raised by the stand-ins of os.execv / subprocess.Popen with the command they got."""


def test_dashboard_passes_streamlit_options_on(monkeypatch):
    def start(*args, **kw):
        raise Started(args[-1] if len(args) == 2 else args[0])

    monkeypatch.setattr(dashboard.os, "execv", start)
    monkeypatch.setattr(dashboard.subprocess, "Popen", start)
    with pytest.raises(Started) as e:
        cli.main(["dashboard", "--server.port", "8600", "--server.headless=true", "--theme.base", "dark"])
    assert e.value.args[0] == [sys.executable, "-m", "streamlit", "run", str(app_script()), "--server.port", "8600",
                               "--server.headless=true", "--theme.base", "dark"]
    assert app_script() == ROOT / "app.py"  # in the clone, the repository's entry point


def test_dashboard_without_streamlit_says_how_to_install_it(monkeypatch, capsys):
    real = dashboard.importlib.util.find_spec
    monkeypatch.setattr(dashboard.importlib.util, "find_spec", lambda name, *a: None if name == "streamlit"
                        else real(name, *a))
    monkeypatch.setattr(dashboard.os, "execv", lambda *a: pytest.fail("started without streamlit"))
    assert cli.main(["dashboard", "--server.port", "8600"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install 'pdae-core[app]'" in err and len(err.splitlines()) == 1


def test_dashboard_prints_the_demo_checkpoint_without_heavy_imports():
    code = ("import contextlib, io, sys\nfrom pdae_core.cli import main\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n    rc = main(['dashboard', '--demo-checkpoint'])\n"
            "print(rc, [m for m in ('torch', 'streamlit', 'anndata') if m in sys.modules], buf.getvalue().strip())")
    out = run([sys.executable, "-c", code], cwd=ROOT).stdout.split(" ", 2)
    assert out[0] == "0" and out[1] == "[]" and Path(out[2].strip()) == demo_checkpoint() == ROOT / "checkpoints" / \
        "norman19_devel"
