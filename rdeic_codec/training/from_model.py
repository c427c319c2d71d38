"""Start training from a finished model directory instead of from scratch (``rdeic train --from``).

A model directory holds every trained part, so it can stand in for the stages that made it: its
autoencoder, base denoiser and compression and control modules are written into the work folder as
finished stages. The stages still to run (for example ``decoder`` and ``finetune``) then refine the
model, and the latent cache is rebuilt from its encoder.
"""

from __future__ import annotations

import os

from ..networks.autoencoder import save_autoencoder
from .checkpoint import save_checkpoint


def _stage_modules(model, stage: str) -> dict:
    """The modules a stage's checkpoint holds, under the names the stage itself saves them by."""
    if stage == "autoencoder":
        return {"vae": model.vae}
    if stage == "denoiser":
        import torch

        from .stage_denoiser import BaseDenoiser

        base = BaseDenoiser(model.config)
        base.unet.load_state_dict(model.unet.state_dict())
        with torch.no_grad():
            base.context.copy_(model.unet.context)  # the base denoiser keeps the learned context as a parameter
        return {"denoiser": base}
    if stage == "compression":
        return {"compression": model.compression}
    return {"compression": model.compression, "control": model.control}


def seed_work_from_model(model_dir: str, work: str, log=print, skip=(), extend=None) -> list[str]:
    """Write the parts of the model in ``model_dir`` into ``work`` as finished stages; returns those stages.

    A stage that already has a checkpoint or is finished in ``work`` is left alone, so running the same
    command again resumes instead of starting over. ``finetune`` is seeded only when the model went
    through it; the ``decoder`` stage never is, because it refines whatever autoencoder it is given.
    Stages in ``skip`` are not seeded (a new compression module trains them afresh). A stage in
    ``extend`` ({stage: iterations}) whose model ran fewer iterations is seeded unfinished, so that it
    resumes from the model's weights to that count (``rdeic train --from M --stages stage1 --steps
    stage1=N``).
    """
    from ..model import load_model
    from .pipeline import compression_steps

    model = load_model(model_dir)
    trained = model.config.get("training", {})
    steps = trained.get("steps", {})
    wanted = ["autoencoder", "denoiser", "compression", "stage1"]
    if "finetune" in trained.get("stages", []):
        wanted.append("finetune")
    seeded = []
    for stage in (s for s in wanted if s not in skip):
        folder = os.path.join(work, stage)
        if any(os.path.exists(os.path.join(folder, f)) for f in ("done", "checkpoint.safetensors", "vae")):
            continue
        # The iteration count the model's config gives, so that the written model reports it again (for
        # the compression module, where it stands on the schedule a continuation goes on along).
        ran = compression_steps(steps) if stage == "compression" else steps.get(stage)
        save_checkpoint(folder, _stage_modules(model, stage), None, ran,
                        extra={"from_model": model.config["model_id"]})
        if stage == "autoencoder":
            save_autoencoder(model.vae, os.path.join(folder, "vae"))
        if stage in (extend or {}) and ran is not None and extend[stage] > ran:
            log(f"{stage}: continues from model {model.config['model_id']}'s {ran} iterations to {extend[stage]}")
            continue
        open(os.path.join(folder, "done"), "w").close()
        seeded.append(stage)
    if seeded:
        log(f"started from model {model.config['model_id']} ({model_dir}): {', '.join(seeded)} taken as finished")
    return seeded
