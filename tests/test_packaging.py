"""The wheel a user builds (``pip wheel .``) carries the shipped model and works without the checkout."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHIPPED_MODEL, sample_photo

BUILD_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md")


def _clean_env(**extra) -> dict:
    """The environment of a user who installed the wheel: no checkout on the path, no $RDEIC_MODEL."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RDEIC_MODEL", "PYTHONHOME")}
    return {**env, "OMP_NUM_THREADS": "1", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


@pytest.mark.skipif(not os.path.isdir(SHIPPED_MODEL), reason="the shipped model is missing")
def test_wheel_carries_the_model_and_round_trips_a_photo(tmp_path):
    pytest.importorskip("setuptools", reason="building a wheel without network needs setuptools installed")
    # Build from a copy, so the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    src.mkdir()
    for name in BUILD_FILES:
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "rdeic_codec"), src / "rdeic_codec",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(SHIPPED_MODEL, src / "models" / "rdeic-small", ignore=shutil.ignore_patterns("results"))
    env = _clean_env()
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("rdeic-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    model_files = {f"rdeic_codec/default_model/{f}" for f in os.listdir(SHIPPED_MODEL)
                   if f == "config.json" or f.endswith(".safetensors")}
    assert model_files and model_files <= names

    # A fresh virtual environment, offline: the wheel itself, its dependencies from this test's environment.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env)
    vpy = venv / "bin" / "python"
    vsite = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True, env=env).stdout.strip()
    # Plain directory lines: the .pth files of those directories (an editable rdeic) are not run.
    deps = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    with open(os.path.join(vsite, "test-deps.pth"), "w") as f:
        f.write("\n".join(deps) + "\n")
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "-q", "--no-deps",
                          "--no-index", str(wheel)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr

    # From a folder unrelated to the checkout.
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(vpy), "-c", "import rdeic_codec.model as m; print(m.__file__); print(m.DEFAULT_MODEL)"],
                           capture_output=True, text=True, cwd=work, env=env)
    assert where.returncode == 0, where.stderr
    module_file, model_dir = where.stdout.split()
    assert module_file.startswith(vsite) and model_dir.startswith(vsite)
    img = np.asarray(Image.open(sample_photo("gb82_city.png")).convert("RGB"))[:256, :256]
    Image.fromarray(img).save(work / "photo.png")
    rdeic = str(venv / "bin" / "rdeic")
    for args in (["encode", "photo.png", "photo.rdc", "--lambda", "1"], ["decode", "photo.rdc", "back.png", "--steps", "2"]):
        out = subprocess.run([rdeic, *args, "--threads", "1"], capture_output=True, text=True, cwd=work, env=env)
        assert out.returncode == 0, out.stderr
    back = np.asarray(Image.open(work / "back.png").convert("RGB")).astype(float)
    assert back.shape == img.shape
    psnr = 10 * np.log10(255**2 / np.mean((back - img) ** 2))
    flat_psnr = 10 * np.log10(255**2 / np.mean((img.reshape(-1, 3).mean(0) - img) ** 2))
    assert psnr > flat_psnr + 2, (psnr, flat_psnr)  # the photo, not noise: the packaged model did the work


def test_model_lookup_order(monkeypatch, tmp_path):
    from rdeic_codec.model import DEFAULT_MODEL, resolve_model_dir

    monkeypatch.delenv("RDEIC_MODEL", raising=False)
    assert resolve_model_dir(None) == DEFAULT_MODEL == SHIPPED_MODEL  # a checkout: its models/rdeic-small
    monkeypatch.setenv("RDEIC_MODEL", str(tmp_path))
    assert resolve_model_dir(None) == str(tmp_path)
    assert resolve_model_dir("given") == "given"
