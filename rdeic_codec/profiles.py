"""Model configurations ("profiles") of rdeic.

A profile is a plain JSON-serialisable dict, saved as ``config.json`` beside the safetensors weights
(the diffusers convention). One code path builds every profile:

* ``paper``: the RDEIC paper's scale (Li et al., TCSVT 2025): Stable Diffusion 2.1-base UNet and VAE,
  a compression module of about 52M and a control module of about 25M parameters.
* ``small``: the default model trained by this project on a 2-core CPU.
* ``small-hyperprior``: the same with a mean-scale hyperprior compression module (issue 21, under test).
* ``tiny``: a few thousand parameters, for unit tests only (SD's layout).
* ``tiny-shuffle``: the same with the small profile's autoencoder, for unit tests only.
* ``tiny-hyperprior``: the same with the small profile's hyperprior compression module, for unit tests only.
"""

from __future__ import annotations

import copy

# Channel slices of y for the ELIC-style channel context (method file, section 1.6).
PAPER_SLICES = [8, 8, 8, 8, 16, 16, 32, 32, 64, 64]

# SD's noise schedule and relay start (method file, section 4).
DIFFUSION = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "relay_start": 299,
    "trained_steps": [2, 5],
}

# Coding-time tables (method file, section 2): 64 log-spaced scales from 0.11 to 256. ``scale_rule``
# (rdeic_codec/entropy/tables.py) is how scale outputs map to the table: this project's models were
# trained with |s|; the authors' (the paper profile, rdeic convert) with compressai's lower bound.
ENTROPY = {"scale_min": 0.11, "scale_max": 256.0, "num_scales": 64, "mean_step_log2": -8, "max_symbol": 4096,
           "scale_rule": "nearest_abs"}
# The paper profile's means sit on a finer grid, 2^-16. Measured at its shapes (tools/mean_grid.py,
# docs/paper-profile.md): every mean stayed at least 50× (256×256 image) and 210× (512×512) farther
# from a rounding boundary than float64 parameters off by 1e-12 moved it (1 vs 2 threads moved none),
# and the grid keeps nearly every symbol the authors' exact means give (2^-8 changed 0.2% of them).
PAPER_ENTROPY = {**ENTROPY, "scale_rule": "lower_bound_ceil", "mean_step_log2": -16}

_SD21_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
    "norm_num_groups": 32,
}

_SD21_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

PAPER = {
    "profile": "paper",
    "vae": _SD21_VAE,
    "unet": _SD21_UNET,
    # Shape of the stored empty-prompt text embedding fed to cross-attention.
    "context_shape": [1, 77, 1024],
    "control": {
        "block_out_channels": [64, 128, 256, 256],
        "attention_head_dim": 16,
        "norm_num_groups": 32,
        "time_proj_channels": 320,
        "time_embed_channels": 1280,
    },
    "compression": {
        "feature_channels": 512,
        "feature_scale": 0.18215,
        "N": 256,
        "M": 256,
        "hyper_channels": 256,
        "codebook_size": 16384,
        "slices": PAPER_SLICES,
        "context_hidden": [224, 128],
        "guide_channels": 256,
        "lambdas": None,
    },
    "diffusion": DIFFUSION,
    "entropy": PAPER_ENTROPY,
}

SMALL = {
    "profile": "small",
    # No convolution at full resolution: a space-to-depth stem and a pixel-shuffle head (issue 11: 10 dB
    # better than a 4-channel AutoencoderKL in the same CPU time); 16 latent channels at 1/8.
    "vae": {
        "type": "shuffle",
        "in_channels": 3,
        "latent_channels": 16,
        "channels": [64, 128],
        "blocks": [2, 3],
        "scaling_factor": 1.0,
    },
    "unet": {
        "sample_size": 32,
        "in_channels": 16,
        "out_channels": 16,
        "block_out_channels": [32, 64, 128, 128],
        "layers_per_block": 2,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": 64,
        "attention_head_dim": 4,
        "use_linear_projection": True,
        "norm_num_groups": 16,
    },
    "context_shape": [1, 4, 64],
    "control": {
        "block_out_channels": [16, 32, 64, 64],
        "attention_head_dim": 16,
        "norm_num_groups": 8,
        "time_proj_channels": 32,
        "time_embed_channels": 128,
    },
    "compression": {
        "feature_channels": 128,
        "latent_channels": 16,
        # Training only: the rate term is the coded size of rounded y (see CompressionModule.forward).
        "rate_proxy": "hard",
        # Training only: the distortion weight is 0.1·λ^0.2, not λ, to put the rates in the paper's range
        # (λ = 0.1 → ≤ 0.03 bpp, λ = 2 → 0.10–0.14). The rates answer it slowly; every weight tried and
        # the file bpp it gave are in docs/training.md. The shipped model (stage 1 at 0.2·λ^0.2, stage 2
        # at 0.06·λ^0.05, which its config.json keeps for `rdeic train --from`) gives 0.029 / 0.059 /
        # 0.147 bpp at λ = 0.1 / 0.5 / 2 on the 66 validation crops: λ = 2 is still a little high.
        "distortion_scale": 0.1,
        "distortion_power": 0.2,
        # Training only: z_c's distortion is mostly measured in pixels, through the frozen decoder
        # (see stage_rdeic.zc_distortion): the latent MSE alone gave z_c that decode to a blur of 18–20 dB.
        "zc_pixel_weight": 4.0,
        "zc_latent_weight": 0.1,
        # Training only: 1 − MS-SSIM of the same decoded window, weight 0.5 (issue 11's target metric).
        # In 1,500 iterations (docs/curves/small-s18.*) it raised z_c's MS-SSIM on the validation crops
        # from 0.54 to 0.63 at λ = 0.1, and its PSNR by 0.8 dB, at about a third more bits.
        "zc_msssim_weight": 0.5,
        "feature_scale": 0.18215,
        "N": 64,
        "M": 128,
        "hyper_channels": 64,
        "codebook_size": 1024,
        "slices": [4, 4, 4, 4, 8, 8, 16, 16, 32, 32],
        "context_hidden": [96, 64],
        "guide_channels": 64,
        # One model for every rate: per-channel gains on y at these λ, interpolated in log λ.
        "lambdas": [0.1, 0.25, 0.5, 1.0, 2.0],
    },
    # The relay starts at t = 150 (noise σ/√ᾱ = 0.46), not SD's 299 (0.83): the small denoiser cannot
    # remove the larger noise. With the same weights (models/rdeic-small/README.md), 2 steps from t = 150 gave
    # 17.50 dB and NIQE 6.22 on the three sample photos, from t = 299 16.86 dB and 6.41.
    "diffusion": dict(DIFFUSION, relay_start=150),
    "entropy": ENTROPY,
}

# The small profile with a plain mean-scale hyperprior compression module (rdeic_codec/networks/hyperprior.py)
# in place of the paper's: issue 21's probe measured one learning far faster on the CPU, but this project's
# first run of it (docs/training.md, session 9) came out below the paper design at the same rate, so it is
# a profile of its own until a model made with it beats the shipped one on whole photos.
HYPERPRIOR_COMPRESSION = {
    "type": "hyperprior",
    # g_a reads the autoencoder's 16-channel latent, as issue 21's probe did (the 128-channel feature
    # before it learned slower: docs/training.md, session 9).
    "input": "latent",
    "feature_channels": 16,
    "latent_channels": 16,
    "feature_scale": 1.0,
    # Residual blocks without an activation on their output, plain stride-2 and pixel-shuffle resampling
    # (networks/blocks.PlainResidualBlock, issue 21's probe design): at one λ, after 1,200 iterations, 18%
    # fewer bits than the activated blocks at −0.06 dB on 12 whole photos (docs/training.md, session 12).
    # Models without the key keep the activated blocks.
    "blocks": "plain",
    "N": 128,
    "M": 96,
    "hyper_channels": 64,
    "guide_channels": 64,
    # One model for every rate: per-channel gains on y at these λ, interpolated in log λ.
    "lambdas": [0.1, 0.25, 0.5, 1.0, 2.0],
    # The space-channel context (networks/hyperprior.SpaceChannelHyperContext; the compression stage trains
    # it with the module, the "context" stage on a finished one): y coded in four channel slices, each in
    # two checkerboard passes, its parameters predicted from the slices before it and its decoded anchors
    # as well as from h_s. On the shipped module's y (context stage, 3,000 iterations) it coded the same ŷ
    # in 4–14% fewer bits than the checkerboard context, at the same CPU cost (docs/training.md, session 19);
    # with g_s trained on around it (continue_parts below) the shipped models have it since 15d299c7 (session 21).
    # Every slice's 1×1 layers are 192 wide (4 per channel, which made the costliest first slices the
    # narrowest, saved 2–5 points less). Trained jointly from scratch with the rest of the module and λ 0.1 …
    # 2 (session 21's scratch18), every λ bought more bits: the lowest reachable rate was 0.040 bpp on the
    # calibration photos (0.034 on the validation photos), above the 0.027 target.
    "context": "space-channel",
    # Training only: how the context is trained from scratch. "after", as the shipped models got theirs:
    # the compression stage with the context held at its no-op start, then the context stage on the
    # finished module (the rate alone), then the synthesis stage (continue_parts below, on along the
    # compression stage's schedule), all before stages 1 and 2 (training/pipeline.py). Trained jointly
    # ("joint") from scratch, z_c was 0.9 dB below 15d299c7's at the low end (scratch18); every run that
    # trained g_a with the context in the loop moved y to higher rates and lost there (r20cont, r21w06,
    # r22gaw; docs/training.md, sessions 20–22).
    "context_training": "after",
    "context_slices": [16, 16, 32, 32],
    "context_hidden": 192,
    "context_channel_hidden": 64,
    # The context stage puts y's costliest channels first before the context learns (stage_context.
    # channels_by_rate): at 1,500 iterations 0.5–4.4% fewer bits than y's own order (session 19).
    "context_order": "rate",
    # Training only: the context stage's peak learning rate. From the shipped module, 3e-4's rounded rate on
    # 32 validation crops at 1,200 iterations was 2–6% below 1e-4's at 3,000 (docs/training.md, session 18).
    "context_learning_rate": 3e-4,
    # Training only: z_c's distortion is the MSE of what the frozen decoder makes of it against what
    # it makes of the true latent (images in [−1, 1]; see stage_rdeic.zc_distortion), weighted by
    # distortion_scale·λ^distortion_power, aimed at λ = 0.1 near 0.03 bpp and λ = 2 near 0.12 on whole
    # photos from issue 21's fixed-λ probes (8-bit MSE weights 1e-4 → 0.06 bpp, 6e-4 → 0.12; 2·w·MSE in
    # [−1, 1] = 16256·w·MSE in 8-bit units). Run A's λ = 2 came out at 0.16–0.22 bpp instead
    # (docs/training.md, session 9): rate_targets below brings the written model's range back.
    "distortion_scale": 1.76,
    "distortion_power": 1.34,
    "zc_pixel_weight": 1.0,
    "zc_latent_weight": 0.0,
    # 0.15·(1 − MS-SSIM) of the same window: at matched rate on 12 whole photos, +0.015 MS-SSIM at 0.02–0.09
    # bpp, PSNR within 0.1 dB (1,200 iterations on from the shipped module; docs/training.md, session 11).
    "zc_msssim_weight": 0.15,
    # The same weight faded out above λ = 0.15 (``zc_msssim_fade`` [0.15, 0.5], stage_rdeic.zc_msssim_weight)
    # is not in the profile: from scratch it cost 0.01–0.02 MS-SSIM at every rate for at most 0.2 dB
    # (docs/training.md, sessions 14 and 15).
    # Written model: the λ range is mapped onto these mean file rates (bpp) at λ = 0.1 and 2,
    # measured on 24 training photos (rdeic_codec/training/rate_calibration.py): the issue-21 range
    # (λ = 0.1 → ≤ 0.03, λ = 2 → 0.10–0.14) with a margin for varied photos.
    "rate_targets": [0.027, 0.125],
    # Training only: the calibration may extrapolate the gains this far past the trained λ (a factor on λ
    # at each end). A context makes the same y cheaper, and λ = 2 then fell to 0.093 bpp inside the trained
    # range; the table 25% past its end gave 0.102 bpp, still +0.20 dB over the shipped model at the same
    # bytes (docs/training.md, session 20).
    "rate_reach": 1.25,
    # Training only: what a continued compression stage (`rdeic train --from M --stages compression --steps
    # compression=N`, N past M's count) trains. g_s, its output layer and the context learn around a context
    # trained for the rate alone; g_a, h_a, h_s and the gains stay, so y and the rates stay too. On from
    # r19sc6 (1,000 iterations, 24 CPU-min): at the same bytes as the shipped model +0.09 / +0.43 / +0.31 dB
    # at 0.023 / 0.055 / 0.093 bpp on the 66 validation photos; the whole module on (r20cont) raised every
    # rate, λ = 0.1 to 0.037 bpp, and lost 1 dB there (docs/training.md, session 20). Names are the
    # module's submodules, and "gains" for the per-λ gains on y (training.stage_rdeic.part_parameters).
    "continue_parts": ["g_s", "out", "context"],
    # Training only: the compression stage's peak learning rate (the probes' 3e-4).
    "learning_rate": 3e-4,
    # Training only: stages 1 and 2 train the control module alone; the rates stay where the
    # compression stage put them.
    "train_in_diffusion_stages": False,
}

SMALL_HYPERPRIOR = copy.deepcopy(SMALL)
SMALL_HYPERPRIOR["profile"] = "small-hyperprior"
SMALL_HYPERPRIOR["compression"] = HYPERPRIOR_COMPRESSION
# Training only (rdeic train's iterations per stage; --steps overrides): those the shipped model's parts ran
# (models/rdeic-small/README.md): the compression module 4,800 without the context, the context 3,000, g_s,
# its output layer and the context on to 7,000 (synthesis: the total on the compression stage's schedule);
# stages 1 and 2 train the control module alone.
SMALL_HYPERPRIOR["stage_steps"] = {"compression": 4800, "context": 3000, "synthesis": 7000, "stage1": 1200,
                                   "finetune": 800}
# The relay starts at t = 75 (noise σ/√ᾱ = 0.29): on this module's z_c, 2 steps from t = 150 lost 0.95 dB
# and 0.083 MS-SSIM against z_c alone, from 75 0.49 dB and 0.041, at NIQE 1.1 below z_c's (12 validation
# photos, λ = 0.5; docs/training.md, session 10).
SMALL_HYPERPRIOR["diffusion"] = dict(DIFFUSION, relay_start=75)
# The anchored prediction (networks/control.py): x̂0 starts at z_c, so the steps keep its fidelity. On 12
# validation photos its 2 steps came within 0.06 dB and 0.001 MS-SSIM of z_c, where the ε prediction lost
# 0.5 dB and 0.04 (docs/training.md, session 11).
SMALL_HYPERPRIOR["control"] = dict(SMALL["control"], prediction="anchored")

TINY = {
    "profile": "tiny",
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [8, 8, 16, 16],
        "layers_per_block": 1,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "norm_num_groups": 4,
        "mid_block_add_attention": False,
        "sample_size": 64,
        "scaling_factor": 1.0,
    },
    "unet": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [8, 16, 16, 16],
        "layers_per_block": 2,
        # Attention only below the full latent resolution: at 1/8 of a 256-pixel crop it took a quarter of
        # a tiny pipeline run's time (1,024 tokens), and the tests need the blocks, not their size.
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": 8,
        "attention_head_dim": 2,
        "use_linear_projection": True,
        "norm_num_groups": 4,
    },
    "context_shape": [1, 3, 8],
    "control": {
        "block_out_channels": [4, 8, 8, 8],
        "attention_head_dim": 4,
        "norm_num_groups": 4,
        "time_proj_channels": 8,
        "time_embed_channels": 32,
    },
    "compression": {
        "feature_channels": 16,
        "feature_scale": 0.18215,
        "N": 8,
        "M": 16,
        "hyper_channels": 8,
        "codebook_size": 32,
        "slices": [1, 1, 1, 1, 1, 1, 2, 2, 3, 3],
        "context_hidden": [8, 8],
        "guide_channels": 8,
        "lambdas": [0.1, 0.5, 2.0],
    },
    "diffusion": DIFFUSION,
    "entropy": ENTROPY,
}

# The small profile's design in miniature (the shuffle autoencoder; ``tiny`` keeps SD's layout, which the
# converter's tests need).
TINY_SHUFFLE = copy.deepcopy(TINY)
TINY_SHUFFLE["profile"] = "tiny-shuffle"
TINY_SHUFFLE["vae"] = {"type": "shuffle", "in_channels": 3, "latent_channels": 6, "channels": [8, 16], "blocks": [1, 1],
                       "scaling_factor": 1.0}
TINY_SHUFFLE["unet"].update(in_channels=6, out_channels=6)
TINY_SHUFFLE["compression"]["latent_channels"] = 6

# The small-hyperprior profile's compression module in miniature.
TINY_HYPERPRIOR = copy.deepcopy(TINY_SHUFFLE)
TINY_HYPERPRIOR["profile"] = "tiny-hyperprior"
TINY_HYPERPRIOR["compression"] = {"type": "hyperprior", "input": "latent", "feature_channels": 6, "latent_channels": 6,
                                  "feature_scale": 1.0, "N": 8, "M": 12, "hyper_channels": 8,
                                  "guide_channels": 8, "lambdas": [0.1, 0.5, 2.0], "context": "space-channel",
                                  "context_slices": [2, 4, 6], "context_hidden": 16,
                                  "context_channel_hidden": 8, "context_order": "rate", "zc_pixel_weight": 1.0,
                                  "zc_latent_weight": 0.0, "train_in_diffusion_stages": False,
                                  "rate_targets": [0.05, 0.5], "continue_parts": ["g_s", "out", "context"]}

# The anchored prediction (x̂0 anchored on z_c; networks/control.py) in miniature.
TINY_ANCHORED = copy.deepcopy(TINY_HYPERPRIOR)
TINY_ANCHORED["profile"] = "tiny-anchored"
TINY_ANCHORED["control"]["prediction"] = "anchored"

PROFILES = {"paper": PAPER, "small": SMALL, "small-hyperprior": SMALL_HYPERPRIOR, "tiny": TINY, "tiny-shuffle": TINY_SHUFFLE,
            "tiny-hyperprior": TINY_HYPERPRIOR, "tiny-anchored": TINY_ANCHORED}

REQUIRED_SECTIONS = ("profile", "vae", "unet", "context_shape", "control", "compression", "diffusion", "entropy")


def get_profile(name: str) -> dict:
    """Return a fresh copy of a named profile's config (``paper``, ``small`` or ``tiny``)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return copy.deepcopy(PROFILES[name])
