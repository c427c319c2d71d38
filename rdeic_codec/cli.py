"""The ``rdeic`` command line: encode, decode, info (and train, eval).

Heavy libraries (torch, diffusers, constriction) are imported inside the commands that need them, so
``rdeic --help`` answers at once. Every user mistake ends in a one-line ``rdeic: error: ...`` on
stderr, a non-zero exit and no partial output file.
"""

from __future__ import annotations

import os
import sys
import time

import click

from . import __version__

EXIT_USAGE = 2
EXIT_FAILURE = 1


def fail(message: str, code: int = EXIT_FAILURE):
    click.echo(f"rdeic: error: {message}", err=True)
    sys.exit(code)


def _user_errors():
    """The exception classes that mean 'bad input', reported without a traceback."""
    from .container import FormatError
    from .imageio import ImageError

    errors = [FormatError, ImageError]
    if "rdeic_codec.codec" in sys.modules:
        errors.append(sys.modules["rdeic_codec.codec"].CodecError)
    if "rdeic_codec.model" in sys.modules:
        errors.append(sys.modules["rdeic_codec.model"].ModelError)
    return tuple(errors)


class _Command(click.Command):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except MemoryError:
            fail("out of memory (try a smaller image, or --device cuda)")
        except Exception as e:  # noqa: BLE001 - user errors become one line; others keep their traceback
            if isinstance(e, _user_errors()):
                fail(str(e))
            raise


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available")
    return torch.device(name)


def _load(model_dir: str | None, device_name: str, threads: int | None):
    import torch

    if threads:
        torch.set_num_threads(threads)
    from .model import load_model

    device = resolve_device(device_name)
    return load_model(model_dir, device)


def _stats(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(message, err=True)


model_option = click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
                            help="Model directory (default: the shipped models/rdeic-small, or $RDEIC_MODEL).")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where the networks run (entropy coding is always on the CPU).")
threads_option = click.option("--threads", type=click.IntRange(1, 256), default=None,
                              help="CPU threads for torch (default: torch's choice).")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
force_option = click.option("-f", "--force", is_flag=True, help="Replace OUTPUT if it exists.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rdeic")
def main():
    """rdeic: extreme image compression (0.02-0.12 bpp) with relay residual diffusion.

    \b
      rdeic encode in.png out.rdc --lambda 0.25
      rdeic decode out.rdc rec.png --steps 5 --detail 1.0
      cat in.png | rdeic encode - - | rdeic decode - rec.png
    """


@main.command(cls=_Command)
@click.argument("input_path", metavar="INPUT")
@click.argument("output", metavar="OUTPUT")
@click.option("-l", "--lambda", "lam", type=float, default=0.25, show_default=True,
              help="Rate parameter: higher keeps more detail and spends more bits (0.1 to 2 for the default model).")
@model_option
@device_option
@threads_option
@quiet_option
@force_option
def encode(input_path, output, lam, model_dir, device, threads, quiet, force):
    """Compress an image (PNG, JPEG, WebP, TIFF, BMP; '-' for stdin) to an .rdc file ('-' for stdout).

    Alpha is not coded: transparent pixels are composited over white.
    """
    from .imageio import check_output, load_image, read_input, write_output

    check_output(output, input_path, force)
    image = load_image(read_input(input_path))
    if image.had_alpha:
        _stats(quiet, "rdeic: warning: the alpha channel is not coded; composited over white")
    model = _load(model_dir, device, threads)
    from . import codec

    t0 = time.perf_counter()
    result = codec.encode(model, image.pixels, lam)
    seconds = time.perf_counter() - t0
    write_output(output, result.data)
    _stats(quiet, f"{output}: {result.width}x{result.height}, lambda {result.lam:g}, {len(result.data)} bytes, "
                  f"{result.bpp:.4f} bpp, encode {seconds:.2f} s")


@main.command(cls=_Command)
@click.argument("input_path", metavar="INPUT")
@click.argument("output", metavar="OUTPUT")
@click.option("-s", "--steps", type=click.IntRange(0, 10), default=5, show_default=True,
              help="Denoising steps (2 and 5 are the trained ones; 0: fast preview without diffusion).")
@click.option("-d", "--detail", type=float, default=1.0, show_default=True,
              help="Detail guidance: 0 smooth, 1 as trained, above 1 sharper (two UNet passes per step unless 1).")
@click.option("--max-pixels", type=click.IntRange(1), default=None,
              help="Refuse files that declare more pixels than this (default 16777216).")
@model_option
@device_option
@threads_option
@quiet_option
@force_option
def decode(input_path, output, steps, detail, max_pixels, model_dir, device, threads, quiet, force):
    """Decompress an .rdc file ('-' for stdin) to an image (PNG, or by OUTPUT's extension; '-' for stdout)."""
    from .imageio import check_output, encode_image, output_format, read_input, write_output

    fmt = output_format(output)
    check_output(output, input_path, force)
    data = read_input(input_path)
    from .container import unpack

    unpack(data)  # a damaged or foreign file fails here, before the model is loaded
    model = _load(model_dir, device, threads)
    from . import codec

    t0 = time.perf_counter()
    progress = _step_progress(steps, quiet)
    pixels = codec.decode(model, data, steps=steps, detail=detail,
                          max_pixels=max_pixels or codec.DEFAULT_MAX_PIXELS, progress=progress)
    seconds = time.perf_counter() - t0
    write_output(output, encode_image(pixels, fmt))
    h, w = pixels.shape[:2]
    _stats(quiet, f"{output}: {w}x{h}, {steps} steps, detail {detail:g}, decode {seconds:.2f} s")


def _step_progress(steps: int, quiet: bool):
    if quiet or steps == 0 or not sys.stderr.isatty():
        return None

    def show(k, total):
        click.echo(f"\rdenoising step {k}/{total}", err=True, nl=k == total)

    return show


@main.command(cls=_Command)
@click.argument("input_path", metavar="INPUT")
def info(input_path):
    """Show the header of an .rdc file."""
    from .container import unpack
    from .imageio import read_input

    data = read_input(input_path)
    header, payload = unpack(data)
    bpp = 8 * len(data) / (header.width * header.height)
    click.echo(f"format version: {header.version}\n"
               f"model id:       {header.model_id_hex}\n"
               f"lambda:         {header.lam:g}\n"
               f"size:           {header.width}x{header.height}\n"
               f"header bytes:   {len(data) - len(payload) - 4} (+4 CRC-32)\n"
               f"payload bytes:  {len(payload)}\n"
               f"total bytes:    {len(data)} ({bpp:.4f} bpp)")


@main.command(cls=_Command)
@click.argument("train_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("valid_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--work", type=click.Path(file_okay=False), required=True,
              help="Folder for checkpoints and caches; running again resumes from it.")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Write the finished model directory here.")
@click.option("--stages", default="autoencoder,denoiser,stage1", show_default=True,
              help="Comma-separated stages to run, in order.")
@click.option("--steps", "step_overrides", multiple=True, metavar="STAGE=N",
              help="Iterations of a stage, e.g. --steps stage1=5000 (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True)
@threads_option
def train(train_dir, valid_dir, work, output, stages, step_overrides, seed, threads):
    """Train the small profile from folders of images (resumable; see docs/training.md)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from .training.pipeline import STAGES, run

    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        fail(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}", EXIT_USAGE)
    steps = {}
    for item in step_overrides:
        name, _, value = item.partition("=")
        if name not in STAGES or not value.isdigit():
            fail(f"--steps takes STAGE=N with STAGE one of {', '.join(STAGES)}, got {item!r}", EXIT_USAGE)
        steps[name] = int(value)
    run(train_dir, valid_dir, work, output, stages=chosen, steps=steps, seed=seed,
        log=lambda m: click.echo(m, err=True))


if __name__ == "__main__":
    main()
