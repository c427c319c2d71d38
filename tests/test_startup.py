"""What a command imports and builds: the start-up cost of a process (times: ``make bench``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from conftest import ROOT, smooth_image

# Modules diffusers imports by default that rdeic never runs (together about 2 s on the 2-core CPU).
HEAVY = ("torch._dynamo", "scipy.stats",
         "diffusers.models.transformers.auraflow_transformer_2d", "diffusers.models.unets.unet_3d_condition",
         "diffusers.models.autoencoders.autoencoder_dc")


def _in_fresh_process(code: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_coding_imports_none_of_the_heavy_modules(tiny_model_dir, tmp_path):
    np.save(tmp_path / "img.npy", smooth_image(64, 96))
    result = _in_fresh_process(f"""
import json, sys
import numpy as np
from rdeic_codec import codec
from rdeic_codec.model import load_model
model = load_model({tiny_model_dir!r})
data = codec.encode(model, np.load({str(tmp_path / "img.npy")!r}), 1.0).data
pixels = codec.decode(model, data, steps=2)
print(json.dumps({{"loaded": [m for m in {HEAVY!r} if m in sys.modules], "shape": list(pixels.shape)}}))
""")
    assert result == {"loaded": [], "shape": [64, 96, 3]}


def test_diffusers_classes_are_the_ordinary_ones_and_diffusers_still_imports_fully(tiny_model_dir):
    result = _in_fresh_process(f"""
import json
from rdeic_codec.model import load_model
model = load_model({tiny_model_dir!r})
from diffusers import AutoencoderKL, UNet2DConditionModel  # the full package, after rdeic's light import
import diffusers.models.transformers as transformers
import torch._dynamo
print(json.dumps({{"unet": type(model.unet) is UNet2DConditionModel, "vae": type(model.vae) is AutoencoderKL,
                   "transformers": hasattr(transformers, "AuraFlowTransformer2DModel")}}))
""")
    assert result == {"unet": True, "vae": True, "transformers": True}


def test_encoding_builds_only_what_it_runs(tiny_model_dir):
    from rdeic_codec.model import ENCODER_COMPONENTS, load_model

    full = load_model(tiny_model_dir)
    enc = load_model(tiny_model_dir, parts=ENCODER_COMPONENTS)
    assert enc.unet is None and enc.control is None
    image = smooth_image(64, 64)
    from rdeic_codec import codec

    assert codec.encode(enc, image, 0.5).data == codec.encode(full, image, 0.5).data


def test_loaded_weights_are_the_stored_values_in_the_running_dtype(tiny_model_dir):
    from safetensors.torch import load_file

    from rdeic_codec.model import load_model

    stored = load_file(os.path.join(tiny_model_dir, "unet.safetensors"))
    for half in (False, True):
        model = load_model(tiny_model_dir, half=half)
        state = model.unet.state_dict()
        want = torch.float16 if half else torch.float32
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {want}
        for key, value in stored.items():
            assert torch.equal(state[key], value.to(want)), key
        assert {v.dtype for v in model.compression.state_dict().values() if v.is_floating_point()} == {torch.float32}


def test_the_command_line_lets_openmp_threads_sleep_unless_the_user_chose():
    code = """
import json, os
from rdeic_codec import cli
print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY")}))
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for chosen, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        run_env = {**env, "PYTHONPATH": ROOT, **({"OMP_WAIT_POLICY": chosen} if chosen else {})}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1]) == {"policy": expected}


def test_the_command_line_keeps_loaded_objects_out_of_garbage_collection(tiny_model_dir, tmp_path):
    # Scanning torch's, diffusers' and the model's objects at every collection cost about 15% of a
    # whole decode (make bench); collection must still work for what coding leaves behind.
    from PIL import Image

    Image.fromarray(smooth_image(64, 96)).save(tmp_path / "in.png")
    result = _in_fresh_process(f"""
import gc, json
from rdeic_codec import cli
from rdeic_codec.cli import main
try:
    main(["encode", {str(tmp_path / "in.png")!r}, {str(tmp_path / "out.rdc")!r}, "--model", {tiny_model_dir!r}, "-q"])
except SystemExit as e:
    assert not e.code, e.code
frozen, enabled = gc.get_freeze_count(), gc.isenabled()
cycle = []
cycle.append(cycle)
del cycle
print(json.dumps({{"frozen": frozen > 10000, "enabled": enabled, "collected": gc.collect() >= 1}}))
""")
    assert result == {"frozen": True, "enabled": True, "collected": True}



def test_large_images_get_huge_pages_chosen_before_torch_loads(tiny_model_dir, tmp_path):
    # THP_MEM_ALLOC_ENABLE only works if set before torch's first allocation: record it when torch loads.
    from PIL import Image

    from rdeic_codec.cli import HUGE_PAGES_PIXELS

    seen = {}
    for name, (w, h) in (("small", (96, 64)), ("large", (HUGE_PAGES_PIXELS // 1000 + 8, 1000))):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / f"{name}.png")
        rdc, back = str(tmp_path / f"{name}.rdc"), str(tmp_path / f"{name}-back.png")
        for args in (["encode", str(tmp_path / f"{name}.png"), rdc], ["decode", rdc, back, "--steps", "0"]):
            seen[name, args[0]] = _in_fresh_process(f"""
import importlib.abc, json, os, sys
os.environ.pop("THP_MEM_ALLOC_ENABLE", None)  # as a user's shell has it (in-process CLI tests may set it)
seen = {{}}
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            seen.setdefault("huge_pages", os.environ.get("THP_MEM_ALLOC_ENABLE"))
        return None
sys.meta_path.insert(0, Watch())
from rdeic_codec.cli import main
try:
    main({args + ["--model", tiny_model_dir, "-q"]!r})
except SystemExit as e:
    assert not e.code, e.code
print(json.dumps(seen))
""")["huge_pages"]
    assert seen == {("small", "encode"): None, ("small", "decode"): None,
                    ("large", "encode"): "1", ("large", "decode"): "1"}
