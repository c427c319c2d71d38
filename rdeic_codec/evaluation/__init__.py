"""Evaluation of rdeic against baselines: quality metrics and baseline codecs.

Modules (imported on demand, so importing this package stays cheap):

- :mod:`.metrics`: PSNR and MS-SSIM on 8-bit RGB.
- :mod:`.niqe`: NIQE (no-reference, MATLAB-compatible).
- :mod:`.baselines`: JPEG, WebP, AVIF, AVIF at half resolution and JPEG XL, with rate matching.
- :mod:`.registry`: the metrics ``rdeic eval`` reports, by name; where LPIPS, DISTS or FID go.
- :mod:`.runner`: the ``rdeic eval`` loop (encode, decode, match baselines, measure).
- :mod:`.report`: results.json, results.csv, rate-quality plots (matplotlib) and index.html.
"""
