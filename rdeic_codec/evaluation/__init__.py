"""Evaluation of rdeic against baselines: quality metrics and baseline codecs.

Modules (imported on demand, so importing this package stays cheap):

- :mod:`.metrics`: PSNR and MS-SSIM on 8-bit RGB.
- :mod:`.niqe`: NIQE (no-reference, MATLAB-compatible).
- :mod:`.baselines`: JPEG, WebP, AVIF, AVIF at half resolution and JPEG XL, with rate matching.
"""
