"""benchmarks/gpu_check.py: its CPU rehearsal (tiny profile) runs every check, and its pixel check fails
when two decodes differ by more than rounding."""

import importlib.util
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_passes_on_the_cpu(tmp_path, capsys):
    assert _script().main(["--dry-run", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gpu_check: all checks passed" in out
    for what, seconds in (("encode", "0.119"), ("decode-2", "0.371"), ("decode-5", "0.632")):
        line = next(x for x in out.splitlines() if x.strip().startswith(what + " "))
        assert line.split()[-1] == seconds  # the paper's RTX 4090 figure beside ours
    assert out.count("decoded symbols identical on CPU and GPU") == 2


def test_pixel_check_tells_rounding_from_a_different_decode():
    check = _script().compare_pixels
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    rounding = a.copy()
    rounding.reshape(-1)[rng.choice(a.size, a.size // 200, replace=False)] ^= 1  # 0.5% off by one level
    assert check(a, rounding)[0]
    shifted = np.clip(a.astype(int) + 3 * (rng.random(a.shape) < 0.1), 0, 255).astype(np.uint8)
    assert not check(a, shifted)[0]
    assert not check(a, a[:32])[0]
