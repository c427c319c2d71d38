"""``rdeic train``: the small profile's stages in order, each resumable, assembled into a model directory.

    autoencoder → (decoder) → cache → denoiser, compression → stage1 → finetune (stage 2) → (context)
    → decoder_zc → (VQ index prior) → (rate calibration) → model dir

A profile whose compression section says ``"context_training": "after"`` trains its learned context as
the shipped models got theirs: the compression stage with the context held at its no-op start, then the
context stage on the finished module (rate only), then the ``synthesis`` stage (the profile's
``continue_parts``, on along the compression stage's schedule), all before stages 1 and 2:

    compression → context → synthesis → stage1 → finetune → decoder_zc

"denoiser" and "compression" are independent of each other: on a machine with spare cores they can
run at the same time, as two ``rdeic train --stages ...`` processes with the same ``--work``.

Every stage keeps its checkpoint in ``WORK/<stage>``; running the same command again resumes where it
stopped, and a finished stage is skipped. Under ``torchrun`` the same command trains on every process
(see :mod:`.distributed`); rank 0 alone writes caches, markers and the model.
"""

from __future__ import annotations

import os

import torch

from ..model import RDEICModel, save_model
from ..profiles import get_profile
from .distributed import runtime

STAGES = ("autoencoder", "decoder", "denoiser", "compression", "stage1", "finetune", "context", "synthesis",
          "decoder_zc")


def _done(work: str, stage: str) -> bool:
    return os.path.exists(os.path.join(work, stage, "done"))


def _mark_done(work: str, stage: str) -> None:
    rt = runtime()
    if rt.is_main:
        open(os.path.join(work, stage, "done"), "w").close()
    rt.barrier()


def run(train_dir: str, valid_dir: str, work: str, output: str | None, profile: str = "small",
        stages=STAGES, steps: dict | None = None, seed: int = 0, device: str | None = None,
        start_from: str | None = None, log=print) -> None:
    """Run ``stages`` in order (skipping finished ones) and write the model to ``output`` if given.

    Args:
        device: where to train (default: the GPU of this process if there is one, else the CPU).
        start_from: a model directory whose parts stand in for the stages that made it
            (see :mod:`.from_model`), so that the remaining stages refine it.
    """
    from ..networks.autoencoder import load_autoencoder, scaling_factor
    from .checkpoint import load_checkpoint
    from .latent_cache import build_cache
    from .stage_autoencoder import train_autoencoder
    from .stage_context import train_context
    from .stage_decoder import train_decoder
    from .stage_decoder_zc import checkpointed_modules, train_decoder_zc
    from .stage_denoiser import train_denoiser
    from .stage_finetune import train_finetune
    from .stage_rdeic import compression_is_frozen, estimate_index_prior, train_stage1

    # The autoencoder's counts reach 30 dB with the small profile's ShuffleAutoencoder (docs/training.md);
    # the others are those of the shipped model (see its model card), which the later stages need more of.
    # A profile may set its own counts (``stage_steps``, training only); --steps overrides both.
    recipe = get_profile(profile)
    asked = dict(steps or {})  # the counts given explicitly (--steps): a seeded stage may continue to them
    steps = {"autoencoder": 4500, "decoder": 1000, "denoiser": 2100, "compression": 1800, "stage1": 2200, "finetune": 2000,
             "context": 3000, "synthesis": 0, "decoder_zc": 3000,
             **recipe.pop("stage_steps", {}), **(steps or {})}
    rt = runtime(device)
    continuing = False  # continues a --from model's compression module (set below)
    if not rt.is_main:
        log = _quiet
    if start_from:
        # The model's own network shapes, whatever --profile says: its weights must fit them.
        from ..model import read_config

        start_config = read_config(start_from)
        config = {k: v for k, v in start_config.items() if k not in ("model_id", "name", "training")}
        # `--steps compression=N` past the model's count continues the model's own module instead (its
        # config and weights, context included; its control module stays; the profile's continue_parts
        # say what trains): see continues_compression.
        continuing = continues_compression(start_config, stages, asked)
        if "compression" in stages and not continuing:
            # A new compression module on the model's autoencoder and denoiser: the profile's design, and
            # the stages that train it (and the control module it guides) start afresh.
            config["compression"] = recipe["compression"]
        elif "context" in stages:
            # A new context on the model's module (the context's pre-hook loads weights without it as a
            # context that changes nothing): the profile's context settings.
            config["compression"].update({k: v for k, v in recipe["compression"].items() if k.startswith("context")})
        if "finetune" in stages and "finetune" in recipe:
            # Stage 2's loss settings are training settings: the profile's, not the start model's.
            config["finetune"] = {**config.get("finetune", {}), **recipe["finetune"]}
    else:
        config = recipe
    os.makedirs(work, exist_ok=True)
    if start_from and rt.is_main:
        from .from_model import seed_work_from_model

        fresh = ("compression", "stage1", "finetune") if "compression" in stages and not continuing else ()
        seed_work_from_model(start_from, work, log=log, skip=fresh,
                             extend={s: n for s, n in asked.items() if s in stages})
    rt.barrier()
    if "autoencoder" in stages and not _done(work, "autoencoder"):
        train_autoencoder(config, train_dir, valid_dir, os.path.join(work, "autoencoder"), steps["autoencoder"],
                          seed=seed)
        _mark_done(work, "autoencoder")
    if "decoder" in stages and not _done(work, "decoder"):
        train_decoder(os.path.join(work, "autoencoder", "vae"), train_dir, valid_dir, os.path.join(work, "decoder"),
                      steps["decoder"], seed=seed)
        _mark_done(work, "decoder")
    # The decoder stage leaves the encoder as it is, so the cache and later stages do not depend on it.
    vae_stage = "decoder" if _done(work, "decoder") else "autoencoder"
    if not output and not any(s in stages for s in STAGES[2:]):
        return
    vae = load_autoencoder(os.path.join(work, vae_stage, "vae")).eval()
    config["vae"]["scaling_factor"] = float(scaling_factor(vae))
    train_cache, valid_cache = os.path.join(work, "cache-train.safetensors"), os.path.join(work, "cache-valid.safetensors")
    if rt.is_main:
        build_cache(vae, train_dir, train_cache, log=log)
        build_cache(vae, valid_dir, valid_cache, log=log)
    rt.barrier()

    torch.manual_seed(seed)  # the fresh modules' initial weights follow --seed too
    model = RDEICModel(config)
    model.vae.load_state_dict(vae.state_dict())
    if "denoiser" in stages and not _done(work, "denoiser"):
        train_denoiser(config, train_cache, valid_cache, os.path.join(work, "denoiser"), steps["denoiser"], seed=seed)
        _mark_done(work, "denoiser")
    if any(s in stages for s in ("stage1", "finetune")) or output:
        _load_denoiser(model, os.path.join(work, "denoiser"))
    # The context after the module (see the module docstring): a new module of a profile that asks for it,
    # also when later stages run on their own in the same work folder (stage 1 must start from synthesis).
    staged = (not continuing and config["compression"].get("context_training", "joint") == "after"
              and ("compression" in stages or os.path.isdir(os.path.join(work, "synthesis"))))
    order = ("compression", "context", "synthesis", "stage1", "finetune") if staged else ("compression", "stage1", "finetune")
    previous = None
    for stage in order:
        folder = os.path.join(work, stage)
        modules = {"compression": model.compression}
        if stage not in ("compression", "context", "synthesis"):
            modules["control"] = model.control
        if stage in ("context", "synthesis") and not _done(work, stage):
            if not os.path.exists(os.path.join(folder, "checkpoint.safetensors")):
                load_checkpoint(os.path.join(work, previous), modules)
            if stage == "context":
                train_context(model, train_cache, valid_cache, folder, steps["context"], seed=seed,
                              lr=config["compression"].get("context_learning_rate", 1e-4), log=log)
            else:
                _train_synthesis(model, config, train_cache, valid_cache, valid_dir, folder, steps, seed)
            _mark_done(work, stage)
        elif _done(work, stage):
            # A finished stage's weights carry into the later stages and into the written model. Stages 1
            # and 2 leave a frozen compression module as they found it, and it may have trained on since
            # (a continued compression stage): of theirs, only the control module counts.
            if "control" in modules and compression_is_frozen(model):
                modules = {"control": model.control}
            load_checkpoint(folder, modules)
        elif stage in stages:
            if previous and not os.path.exists(os.path.join(folder, "checkpoint.safetensors")):
                # A stage starts from where the one before it got to (stage 1: the pretrained compression
                # module; stage 2: stage 1's compression and control modules).
                carried = {"compression": model.compression}
                if previous in ("stage1", "finetune"):
                    carried["control"] = model.control
                load_checkpoint(os.path.join(work, previous), carried)
            if stage in ("compression", "stage1"):
                lr = config["compression"].get("learning_rate", 1e-4) if stage == "compression" else 1e-4
                # A continued module trains the profile's parts (as a new context takes the profile's settings).
                parts = recipe["compression"].get("continue_parts") if stage == "compression" and continuing else None
                train_stage1(model, train_cache, valid_cache, folder, steps[stage], seed=seed, lr=lr,
                             diffusion=stage == "stage1", valid_dir=valid_dir, parts=parts,
                             freeze_context=staged and stage == "compression")
            else:
                train_finetune(model, train_dir, valid_dir, folder, steps[stage], seed=seed)
            _mark_done(work, stage)
        previous = stage
    folder = os.path.join(work, "context")
    if staged:
        pass  # trained above, before stages 1 and 2
    elif _done(work, "context"):
        load_checkpoint(folder, {"compression": model.compression})
    elif "context" in stages and config["compression"].get("context", "none") != "none":
        # Before decoder_zc, so that the decoder trains on the z_c the finished module makes.
        train_context(model, train_cache, valid_cache, folder, steps["context"], seed=seed,
                      lr=config["compression"].get("context_learning_rate", 1e-4), log=log)
        _mark_done(work, "context")
    elif "context" in stages:
        log("context: skipped, the compression module has no learned context to train")
    folder = os.path.join(work, "decoder_zc")
    if _done(work, "decoder_zc"):
        load_checkpoint(folder, checkpointed_modules(model))
    elif "decoder_zc" in stages:
        train_decoder_zc(model, train_cache, train_dir, valid_cache, valid_dir, folder, steps["decoder_zc"], seed=seed)
        _mark_done(work, "decoder_zc")
    if output and rt.is_main:
        model.eval()
        if hasattr(model.compression.quantize, "embed_prob"):  # a VQ hyper latent's coding prior
            estimate_index_prior(model, train_cache)
        model.to("cpu")
        extra = {}
        targets = config["compression"].get("rate_targets")
        # A compression module trained afresh here has its whole trained range in its table.
        previous, unchanged = _start_calibration(model, None if "compression" in stages else start_from)
        if previous is not None and unchanged and not _done(work, "context"):
            # The start model's compression module, untouched (e.g. only decoder_zc ran): its rates are what
            # they were, and calibrating again would resample gains that were resampled already.
            extra["rate_calibration"] = previous
        elif targets and model.compression.lambda_range:
            from .rate_calibration import calibrate_rates, calibration_photos

            extra["rate_calibration"] = calibrate_rates(model, calibration_photos(train_dir), *targets,
                                                        previous=previous, log=log,
                                                        reach=recipe["compression"].get("rate_reach", 1.0))
        done = [s for s in STAGES if _done(work, s)]
        if start_from:  # the seeded stages' weights came from this model (its card has their history)
            extra["from_model"] = start_config["model_id"]
        model_id = save_model(model, output, name=os.path.basename(os.path.normpath(output)),
                              extra={"training": {"stages": done, "steps": {s: _steps_run(work, s) for s in done},
                                                  "seed": seed, **extra}})
        log(f"wrote {output} (model id {model_id})")
    rt.barrier()


def _train_synthesis(model, config: dict, train_cache: str, valid_cache: str, valid_dir: str, folder: str,
                     steps: dict, seed: int) -> None:
    """The ``synthesis`` stage: the profile's ``continue_parts`` (g_s, its output layer and the context)
    trained around a context that learned the rate alone, from the compression stage's last iteration to
    ``steps["synthesis"]`` on the same schedule, as a ``--from`` continuation does (docs/training.md,
    session 20: without it the context's means move ŷ where g_s has never seen it)."""
    from .checkpoint import save_checkpoint
    from .stage_rdeic import train_stage1

    if steps["synthesis"] <= steps["compression"]:
        raise ValueError(f"the synthesis stage goes on from the compression stage's {steps['compression']} "
                         f"iterations: give it more (stage_steps or --steps synthesis=N), not {steps['synthesis']}")
    if not os.path.exists(os.path.join(folder, "checkpoint.safetensors")):
        # Starts where the compression stage's schedule stood, with a fresh optimiser (as --from does).
        save_checkpoint(folder, {"compression": model.compression}, None, steps["compression"])
    train_stage1(model, train_cache, valid_cache, folder, steps["synthesis"], seed=seed,
                 lr=config["compression"].get("learning_rate", 1e-4), diffusion=False, valid_dir=valid_dir,
                 parts=config["compression"]["continue_parts"], name="synthesis")


def continues_compression(start_config: dict, stages, asked: dict) -> bool:
    """Whether ``rdeic train --from M --stages compression`` goes on training M's own compression module
    (``--steps compression=N`` above the iterations M's config records) instead of a new one of the
    profile's design: how g_s learns a context put on a finished module (the ``context`` stage), at the
    tail of the compression stage's schedule. The profile's ``continue_parts`` names what it trains."""
    ran = compression_steps(start_config.get("training", {}).get("steps", {}))
    return "compression" in stages and ran is not None and asked.get("compression", 0) > ran


def compression_steps(trained_steps: dict) -> int | None:
    """Where a model's compression module stands on the compression stage's schedule: the compression
    stage's iterations, or the synthesis stage's that went on from them."""
    return trained_steps.get("synthesis") or trained_steps.get("compression")


def _start_calibration(model: RDEICModel, start_from: str | None) -> tuple[dict | None, bool]:
    """The start model's rate calibration (None without one) and whether the compression module's
    weights it had come through unchanged."""
    if not start_from:
        return None, False
    from ..model import load_model

    start = load_model(start_from, parts=("compression",))
    previous = start.config.get("training", {}).get("rate_calibration")
    theirs, ours = start.compression.state_dict(), model.compression.state_dict()
    return previous, all(torch.equal(v, ours[k].to(v)) for k, v in theirs.items())


def _quiet(message: str) -> None:
    pass


def _steps_run(work: str, stage: str) -> int | None:
    """Iterations a finished stage actually ran (from its checkpoint), for the model's config."""
    import json

    path = os.path.join(work, stage, "state.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["step"]


def _load_denoiser(model: RDEICModel, folder: str) -> None:
    from .checkpoint import load_checkpoint
    from .stage_denoiser import BaseDenoiser

    base = BaseDenoiser(model.config)
    if load_checkpoint(folder, {"denoiser": base}) is None:
        raise FileNotFoundError(f"no denoiser checkpoint in {folder}")
    model.unet.load_state_dict(base.unet.state_dict())
    with torch.no_grad():
        model.unet.context.copy_(base.context)
