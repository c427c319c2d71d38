"""z_c of whole photos for a compression module in training: the quick measure of a probe.

    python tools/zc_probe.py ../shared/data/valid --checkpoint WORK/compression --profile small-hyperprior \
        --lambda 2 [--input latent] [--limit 12] [--crop 256]
    python tools/zc_probe.py ../shared/data/valid --model models/rdeic-small --lambda 0.5,2
    python tools/zc_probe.py ../shared/data/valid --ceiling [--autoencoder M]

For each photo (whole, or its centre crop with ``--crop``): the shipped model's autoencoder encodes it,
the compression module (a stage checkpoint built from ``--profile``'s compression section, or a model
directory's own) predicts z_c, and the autoencoder decodes it. Prints, per λ, the mean rate from the
module's own likelihoods (y and z; for a model directory with a VQ hyper latent, y only: its indices
add about 0.002 bpp), PSNR and MS-SSIM against the photo. No file is written, so a checkpoint whose g_a
reads the latent (``--input latent``, a probe the coder does not run) can be measured too; the training
rate agrees with real files within a few percent (docs/training.md, session 9), and `rdeic eval` is the
measure for anything shipped. ``--ceiling`` decodes the true latent z instead: what no compression
module on this autoencoder can exceed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rdeic_codec import codec  # noqa: E402
from rdeic_codec.evaluation.metrics import ms_ssim, psnr  # noqa: E402
from rdeic_codec.imageio import load_image  # noqa: E402
from rdeic_codec.model import load_model  # noqa: E402
from rdeic_codec.networks.autoencoder import decode_latent, encoder_feature, latent_from_feature  # noqa: E402


def build_module(args):
    if args.model:
        return load_model(args.model).compression
    from rdeic_codec.networks.compression import build_compression
    from rdeic_codec.profiles import get_profile
    from rdeic_codec.training.checkpoint import load_checkpoint

    cfg = dict(get_profile(args.profile)["compression"])
    if args.input == "latent":
        cfg["feature_channels"], cfg["feature_scale"] = cfg.get("latent_channels", 4), 1.0
    comp = build_compression(cfg)
    if load_checkpoint(args.checkpoint, {"compression": comp}) is None:
        sys.exit(f"no checkpoint in {args.checkpoint}")
    return comp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--checkpoint", help="a compression stage's folder (WORK/compression)")
    ap.add_argument("--profile", default="small-hyperprior", help="the profile the checkpoint was trained with")
    ap.add_argument("--input", choices=("feature", "latent"), default="feature", help="what the checkpoint's g_a reads")
    ap.add_argument("--model", help="a model directory instead of a checkpoint")
    ap.add_argument("--autoencoder", default="models/rdeic-small", help="the model whose autoencoder is used")
    ap.add_argument("--lambda", dest="lams", default="0.1,0.5,2")
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--crop", type=int, default=0, help="centre crops of this side instead of whole photos")
    ap.add_argument("--ceiling", action="store_true", help="decode the true latent z (no compression module)")
    args = ap.parse_args()
    if not (args.checkpoint or args.model or args.ceiling):
        ap.error("give --checkpoint, --model or --ceiling")
    torch.set_num_threads(1)
    vae = load_model(args.autoencoder).vae
    comp = None if args.ceiling else build_module(args).eval()
    names = sorted(os.listdir(args.folder))[: args.limit]
    photos = []
    for name in names:
        img = load_image(os.path.join(args.folder, name)).pixels
        if args.crop:
            h, w = img.shape[:2]
            y, x = (h - args.crop) // 2, (w - args.crop) // 2
            img = np.ascontiguousarray(img[y : y + args.crop, x : x + args.crop])
        photos.append(img)
    # The autoencoder's encoder is the same for every λ: each photo is encoded once.
    with torch.no_grad():
        features = [encoder_feature(vae, codec._to_tensor(codec.pad_image(img), "cpu")) for img in photos]
    reads_latent = getattr(comp, "reads_latent", False) if args.model else args.input == "latent"

    def decoded(img, latent):
        h, w = img.shape[:2]
        with torch.no_grad():
            return codec._to_uint8(decode_latent(vae, latent))[:h, :w]

    if comp is None:
        rows = []
        for img, feature in zip(photos, features):
            rec = decoded(img, latent_from_feature(vae, feature))
            rows.append((psnr(img, rec), ms_ssim(img, rec)))
        r = np.mean(rows, axis=0)
        print(json.dumps({"latent": "z", "photos": len(rows), "crop": args.crop or None, "psnr": round(float(r[0]), 3),
                          "ms_ssim": round(float(r[1]), 4)}), flush=True)
        return
    for lam in (float(v) for v in args.lams.split(",")):
        rows = []
        for img, feature in zip(photos, features):
            with torch.no_grad():
                out = comp(latent_from_feature(vae, feature) if reads_latent else feature, torch.tensor([lam]))
            rec = decoded(img, out["z_c"])
            rows.append((float(out["bits"][0]) / (img.shape[0] * img.shape[1]), psnr(img, rec), ms_ssim(img, rec)))
        r = np.mean(rows, axis=0)
        print(json.dumps({"lambda": lam, "photos": len(rows), "crop": args.crop or None, "bpp": round(float(r[0]), 5),
                          "psnr": round(float(r[1]), 3), "ms_ssim": round(float(r[2]), 4)}), flush=True)


if __name__ == "__main__":
    main()
