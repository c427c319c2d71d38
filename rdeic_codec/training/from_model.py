"""Start training from a finished model directory instead of from scratch (``rdeic train --from``).

A model directory holds every trained part, so it can stand in for the stages that made it: its
autoencoder, base denoiser and compression and control modules are written into the work folder as
finished stages. The stages still to run (for example ``decoder`` and ``finetune``) then refine the
model, and the latent cache is rebuilt from its encoder.
"""

from __future__ import annotations

import json
import os

from safetensors.torch import save_file

# What each stage's checkpoint holds, as (checkpoint module name, model part) pairs.
_STAGE_PARTS = {
    "denoiser": (("denoiser", "unet"),),
    "compression": (("compression", "compression"),),
    "stage1": (("compression", "compression"), ("control", "control")),
    "finetune": (("compression", "compression"), ("control", "control")),
}


def seed_work_from_model(model_dir: str, work: str, log=print) -> list[str]:
    """Write the parts of the model in ``model_dir`` into ``work`` as finished stages; returns those stages.

    A stage that already has a checkpoint or is finished in ``work`` is left alone, so running the same
    command again resumes instead of starting over. ``finetune`` is seeded only when the model went
    through it; the ``decoder`` stage never is, because it refines whatever autoencoder it is given.
    """
    from ..model import load_model

    model = load_model(model_dir)
    trained = model.config.get("training", {})
    steps = trained.get("steps", {})
    wanted = ["autoencoder", "denoiser", "compression", "stage1"]
    if "finetune" in trained.get("stages", []):
        wanted.append("finetune")
    seeded = []
    for stage in wanted:
        folder = os.path.join(work, stage)
        if any(os.path.exists(os.path.join(folder, f)) for f in ("done", "checkpoint.safetensors", "vae")):
            continue
        os.makedirs(folder, exist_ok=True)
        state = {"step": steps.get(stage), "param_groups": [], "optim_scalars": {},
                 "extra": {"from_model": model.config["model_id"]}}
        if stage == "autoencoder":
            model.vae.save_pretrained(os.path.join(folder, "vae"))
        else:
            tensors = {}
            for name, part in _STAGE_PARTS[stage]:
                for key, value in model.component(part).state_dict().items():
                    if part == "unet" and key == "context":
                        # The base denoiser keeps the learned context as its own parameter.
                        tensors["model.denoiser.context"] = value.detach().clone()
                        key = "unet.context"
                    elif part == "unet":
                        key = f"unet.{key}"
                    tensors[f"model.{name}.{key}"] = value.detach().contiguous()
            save_file(tensors, os.path.join(folder, "checkpoint.safetensors"))
        with open(os.path.join(folder, "state.json"), "w") as f:  # the iteration count the model's config gives
            json.dump(state, f)
        open(os.path.join(folder, "done"), "w").close()
        seeded.append(stage)
    if seeded:
        log(f"started from model {model.config['model_id']} ({model_dir}): {', '.join(seeded)} taken as finished")
    return seeded
