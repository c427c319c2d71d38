"""The ``rdeic`` command line: encode, decode, info, convert (and train, eval).

Heavy libraries (torch, diffusers, constriction) are imported inside the commands that need them, so
``rdeic --help`` answers at once. Every user mistake ends in a one-line ``rdeic: error: ...`` on
stderr, a non-zero exit and no partial output file.
"""

from __future__ import annotations

import errno
import gc
import os
import sys
import time

import click

from . import __version__

# OpenMP threads that spin while they wait for work (libgomp's default) hold a core that something else
# on the machine needs, and then wait for it themselves: with one of 2 cores busy, a 576×576 decode with
# 5 steps took 104 s spinning and 15 s passive. Set only when the user has not chosen, before torch
# loads its OpenMP runtime (no command imports torch before this module runs).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell shows for a tool whose reader left (`| head`)


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
    if "rdeic_codec.training.data" in sys.modules:
        errors.append(sys.modules["rdeic_codec.training.data"].DataError)
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
            from .imageio import WriteError

            if isinstance(e, WriteError) and e.errno == errno.EPIPE:
                sys.exit(EXIT_BROKEN_PIPE)  # the reader took what it wanted; no message, as Unix tools do
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


def _load(model_dir: str | None, device_name: str, threads: int | None, half: bool = False, encode_only=False):
    # Importing torch and diffusers and building the networks create a few hundred thousand long-lived
    # objects, which Python's cyclic garbage collector would otherwise scan again and again while they
    # are made and at every later collection. Collection is off until the model is loaded, and what
    # exists then is frozen out of later collections (gc.freeze): garbage made while coding is still
    # collected.
    gc.disable()
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        from .model import COMPONENTS, ENCODER_COMPONENTS, load_model

        device = resolve_device(device_name)
        return load_model(model_dir, device, half=half, parts=ENCODER_COMPONENTS if encode_only else COMPONENTS)
    finally:
        gc.freeze()
        gc.enable()


# Above this many pixels, torch puts its large tensors on transparent huge pages (THP_MEM_ALLOC_ENABLE,
# read once when torch first allocates). Tiled coding allocates and frees large tile buffers over and
# over, and each fresh one is faulted in 4 kB at a time: on the 2-core CPU, one thread, a 5.7 MP encode
# took 51–52 s with 20 s of it in the kernel, 39–42 s with huge pages; a decode with 2 steps 60.4 s
# against 51.6 s, at the same peak memory. For a 768×512 decode they cost 4% (whole process, median).
HUGE_PAGES_PIXELS = 2_000_000


def _before_torch_for(width: int, height: int) -> None:
    """What must be chosen before torch loads, for an image of this size (see HUGE_PAGES_PIXELS)."""
    if width * height > HUGE_PAGES_PIXELS:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _check_size(width: int, height: int, max_pixels: int | None, what: str) -> None:
    _before_torch_for(width, height)
    from . import codec  # imports torch: only once the input is known to be an image

    codec.check_size(width, height, max_pixels or codec.DEFAULT_MAX_PIXELS, what)


def _stats(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(message, err=True)


model_option = click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
                            help="Model directory (default: $RDEIC_MODEL if set, else the shipped model).")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where the networks run (entropy coding is always on the CPU).")
threads_option = click.option("--threads", type=click.IntRange(1, 256), default=None,
                              help="CPU threads for torch (default: torch's choice).")
half_option = click.option("--half", is_flag=True,
                            help="Run the autoencoder and diffusion networks in float16 (for GPUs: half the memory, "
                                 "faster); the file format and entropy coding are unchanged.")
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


def _inputs_and_output(paths: tuple[str, ...], out_dir: str | None, suffix: str) -> tuple[list[str], str | None]:
    """(inputs, OUTPUT) of the single-file form ``INPUT OUTPUT``, or (inputs, None) with ``-o OUTDIR``."""
    if out_dir is not None:
        if "-" in paths:
            fail("'-' (standard input) cannot be used with -o OUTDIR", EXIT_USAGE)
        return list(paths), None
    if len(paths) == 2:
        return [paths[0]], paths[1]
    if len(paths) < 2:
        fail(f"missing OUTPUT: give INPUT OUTPUT, or inputs and -o OUTDIR (each written as OUTDIR/NAME{suffix})",
             EXIT_USAGE)
    fail(f"{len(paths)} paths given: several inputs need -o OUTDIR (each written as OUTDIR/NAME{suffix})", EXIT_USAGE)


def _run_batch(inputs: list[str], out_dir: str, suffix: str, force: bool, quiet: bool, load, work) -> None:
    """Many files, one model: ``work(model, job)`` per file; failures listed at the end, exit 1."""
    from . import batch

    jobs = batch.plan(inputs, out_dir, suffix, force)
    model = load()  # a bad model fails before the folder is made
    batch.prepare_out_dir(out_dir)
    t0 = time.perf_counter()
    failures = batch.run(jobs, lambda job: work(model, job), batch.FileProgress(len(jobs), quiet))
    if failures:
        click.echo(batch.summary(failures, len(jobs)), err=True)
        sys.exit(EXIT_FAILURE)
    _stats(quiet, f"{out_dir}: {len(jobs)} files, {batch.elapsed(t0)}")


def _size_option(ctx, param, value):
    if value is None:
        return None
    from .target import parse_size

    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@main.command(cls=_Command)
@click.argument("paths", metavar="INPUT... [OUTPUT]", nargs=-1, required=True)
@click.option("-o", "--output-dir", "out_dir", metavar="OUTDIR", type=click.Path(file_okay=False), default=None,
              help="Encode every INPUT to OUTDIR/NAME.rdc (created if missing), loading the model once.")
@click.option("-l", "--lambda", "lam", type=float, default=None,
              help="Rate parameter: higher keeps more detail and spends more bits (0.1 to 2 for the default model; "
                   "default 0.25).")
@click.option("--size", "size", callback=_size_option, metavar="BYTES", default=None,
              help="Instead of --lambda: the largest file not over BYTES (1500, 1.5k = 1500, 2M), "
                   "searched over the model's λ range.")
@click.option("--bpp", type=float, default=None,
              help="Instead of --lambda: the largest file not over this many bits per pixel.")
@click.option("--refine", type=click.IntRange(0, 1000), default=0, show_default=True, metavar="N",
              help="Refine the latent for this image in N gradient steps before coding: "
                   "a more faithful picture at about the same size, decoded as any other file; encoding "
                   "takes about N decoder passes longer. 25 is a good start. With --size or --bpp the "
                   "refined file is kept within the target (up to three refinements).")
@model_option
@device_option
@threads_option
@quiet_option
@force_option
@click.option("--max-pixels", type=click.IntRange(1), default=None,
              help="Refuse images with more pixels than this, counted as for decode (default 100000000).")
@half_option
def encode(paths, out_dir, lam, size, bpp, refine, model_dir, device, threads, quiet, force, max_pixels, half):
    """Compress an image (PNG, JPEG, WebP, TIFF, BMP; '-' for stdin) to an .rdc file ('-' for stdout).

    \b
      rdeic encode in.png out.rdc --lambda 0.5
      rdeic encode in.png out.rdc --size 2k        # the largest file not over 2000 bytes
      rdeic encode *.png -o out/ --bpp 0.05        # out/NAME.rdc for each; the model loads once
      rdeic encode in.png out.rdc --lambda 0.5 --refine 25   # slower encode, better file
      rdeic encode in.png out.rdc --size 2k --refine 25

    Alpha is not coded: transparent pixels are composited over white.
    """
    from .imageio import check_output, load_image, read_input, write_output

    if sum(v is not None for v in (lam, size, bpp)) > 1:
        fail("give one of --lambda, --size and --bpp", EXIT_USAGE)
    inputs, output = _inputs_and_output(paths, out_dir, ".rdc")

    def encode_one(model, input_path, output, warn, progress=None):
        image = load_image(read_input(input_path),
                           check_size=lambda w, h: _check_size(w, h, max_pixels, "input image"))
        if image.had_alpha:
            warn("the alpha channel is not coded; composited over white")
        if image.colour_note:
            warn(image.colour_note)
        if model is None:
            model = _load(model_dir, device, threads, half, encode_only=True)
        from . import codec
        from .target import check_rate, encode_at_rate

        t0 = time.perf_counter()
        check_rate(model, (image.pixels.shape[1], image.pixels.shape[0]), lam, size, bpp)
        if refine:
            from .refine import check_refinable

            check_refinable(model)
        # The pixels go once the λ-independent half has run (3 bytes a pixel less during entropy coding),
        # unless refinement measures against them.
        analysis = codec.analyse_image(model, image.pixels)
        pixels = image.pixels if refine else None
        del image
        result, search = encode_at_rate(model, analysis, lam, size, bpp, refine=refine, pixels=pixels,
                                        progress=progress)
        seconds = time.perf_counter() - t0
        write_output(output, result.data)
        line = (f"{output}: {result.width}x{result.height}, lambda {result.lam:g}, {len(result.data)} bytes, "
                f"{result.bpp:.4f} bpp, encode {seconds:.2f} s")
        if refine and not (search is not None and search.refine_missed):
            line += f" ({refine} refinement steps)"
        if search is not None:
            n = len(search.probes)
            line += f" (target {search.target_bytes} bytes, {n} probe{'s' if n > 1 else ''})"
            if search.refine_missed:
                warn(f"every refined file was over the target {search.target_bytes} bytes; wrote the "
                     f"unrefined one ({len(result.data)} bytes at lambda {result.lam:g})")
            if search.above_largest:
                warn(f"target {search.target_bytes} bytes is above the largest file this model makes for "
                     f"this image; wrote that one ({len(result.data)} bytes at lambda {result.lam:g})")
        return line

    if output is not None:  # the single-file form, unchanged: INPUT OUTPUT
        check_output(output, inputs[0], force)
        _stats(quiet, encode_one(None, inputs[0], output, lambda m: _stats(quiet, f"rdeic: warning: {m}"),
                                 _step_progress(refine, quiet, "refining: step")))
        return

    def work(model, job):
        notes = []
        line = encode_one(model, job.input, job.output, notes.append)
        return "; ".join([line] + [f"warning: {n}" for n in notes])

    def load_checked():
        model = _load(model_dir, device, threads, half, encode_only=True)
        from . import codec, target

        # What would fail every file fails once, before any work.
        if lam is not None:
            codec.check_lambda(model, lam)
        elif size is not None or bpp is not None:
            target.check_searchable(model)
        if refine:
            from .refine import check_refinable

            check_refinable(model)
        return model

    _run_batch(inputs, out_dir, ".rdc", force, quiet, load_checked, work)


@main.command(cls=_Command)
@click.argument("paths", metavar="INPUT... [OUTPUT]", nargs=-1, required=True)
@click.option("-o", "--output-dir", "out_dir", metavar="OUTDIR", type=click.Path(file_okay=False), default=None,
              help="Decode every INPUT to OUTDIR/NAME.png (created if missing), loading the model once.")
@click.option("-s", "--steps", type=click.IntRange(0, 10), default=5, show_default=True,
              help="Denoising steps (2 and 5 are the trained ones; 0: fast preview without diffusion).")
@click.option("-d", "--detail", type=float, default=1.0, show_default=True,
              help="Detail guidance: 0 smooth (the default model: z_c itself), 1 as trained, above 1 sharper.")
@click.option("--max-pixels", type=click.IntRange(1), default=None,
              help="Refuse files that declare more pixels than this, counted at the size the decoder works at "
                   "(sides rounded up to multiples of 64) (default 100000000).")
@model_option
@device_option
@threads_option
@quiet_option
@force_option
@half_option
def decode(paths, out_dir, steps, detail, max_pixels, model_dir, device, threads, quiet, force, half):
    """Decompress an .rdc file ('-' for stdin) to an image (PNG, or by OUTPUT's extension; '-' for stdout).

    \b
      rdeic decode in.rdc out.png --steps 5
      rdeic decode *.rdc -o rec/                   # rec/NAME.png for each; the model loads once
    """
    from .imageio import check_output, encode_image, output_format, read_input, write_output

    inputs, output = _inputs_and_output(paths, out_dir, ".png")

    def decode_one(model, input_path, output, progress=None):
        fmt = output_format(output)
        data = read_input(input_path)
        from .container import unpack

        header, _ = unpack(data)  # a damaged or foreign file fails here, before the model is loaded
        _before_torch_for(header.width, header.height)
        if model is None:
            model = _load(model_dir, device, threads, half)
        from . import codec

        t0 = time.perf_counter()
        pixels = codec.decode(model, data, steps=steps, detail=detail,
                              max_pixels=max_pixels or codec.DEFAULT_MAX_PIXELS, progress=progress)
        seconds = time.perf_counter() - t0
        write_output(output, encode_image(pixels, fmt))
        h, w = pixels.shape[:2]
        return f"{output}: {w}x{h}, {steps} steps, detail {detail:g}, decode {seconds:.2f} s"

    if output is not None:  # the single-file form, unchanged: INPUT OUTPUT
        output_format(output)
        check_output(output, inputs[0], force)
        _stats(quiet, decode_one(None, inputs[0], output, _step_progress(steps, quiet)))
        return
    _run_batch(inputs, out_dir, ".png", force, quiet, lambda: _load(model_dir, device, threads, half),
               lambda model, job: decode_one(model, job.input, job.output))


def _step_progress(count: int, quiet: bool, what: str = "denoising step"):
    """A progress line on a terminal's stderr ("WHAT k/total"), or None when there is nothing to show."""
    if quiet or count == 0 or not sys.stderr.isatty():
        return None

    def show(k, total):
        click.echo(f"\r{what} {k}/{total}", err=True, nl=k == total)

    return show


@main.command(cls=_Command)
@click.option("--rdeic", "rdeic_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The authors' RDEIC checkpoint, e.g. rdeic_2_step2.ckpt.")
@click.option("--sd", "sd_path", type=click.Path(exists=True), default=None,
              help="Stable Diffusion 2.1-base: v2-1_512-ema-pruned.ckpt (or .safetensors), or a diffusers folder.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("-l", "--lambda", "lam", type=float, default=None,
              help="The lambda the model was trained for (default: from the name rdeic_<lambda>_step<k>.ckpt).")
@click.option("--context", "context_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A safetensors file with the precomputed empty-prompt text embedding (1x77x1024).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage of the weights: float32 keeps the authors' values exactly; float16 halves the "
                   "disk (about 2.1 instead of 4.1 GB) and changes rates and pixels slightly.")
@click.option("--profile", type=click.Choice(["paper", "tiny"]), default="paper", hidden=True)
@quiet_option
@force_option
def convert(rdeic_path, sd_path, output, lam, context_path, dtype, profile, quiet, force):
    """Convert the RDEIC authors' checkpoints into an rdeic model directory (see docs/paper-profile.md)."""
    from .convert import convert as run_convert

    t0 = time.perf_counter()
    result = run_convert(rdeic_path, output, sd_path=sd_path, lam=lam, context_path=context_path,
                         profile=profile, force=force, dtype=dtype)
    _stats(quiet, f"{output}: model {result.model_id}, lambda {result.lam:g}, {result.tensors} tensors, "
                  f"{len(result.ignored)} keys ignored (recomputable or unused), {time.perf_counter() - t0:.1f} s")


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
@click.option("--stages", default="autoencoder,decoder,denoiser,compression,stage1,finetune,decoder_zc",
              show_default=True,
              help="Comma-separated stages to run, in order. Also: context (the profile's learned context on a "
                   "finished model's compression module, with --from; from scratch the compression stage "
                   "trains it, and with the small-hyperprior profile then runs the context and synthesis "
                   "stages after it).")
@click.option("--steps", "step_overrides", multiple=True, metavar="STAGE=N",
              help="Iterations of a stage, e.g. --steps stage1=5000 (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--profile", type=click.Choice(["small", "small-hyperprior", "tiny"]), default="small-hyperprior",
              show_default=True,
              help="Network sizes and recipe (small-hyperprior: the shipped model's, a mean-scale hyperprior "
                   "compression module; small: the earlier models', the paper's compression module; tiny: a few "
                   "thousand parameters, for trying the pipeline in seconds).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train (under torchrun, each process takes the GPU of its LOCAL_RANK).")
@click.option("--from", "start_from", type=click.Path(exists=True, file_okay=False), default=None,
              help="Start from this model directory: its parts count as finished stages, so the stages "
                   "left (e.g. --stages decoder,finetune) refine it; a stage in --stages that --steps gives "
                   "more iterations than the model ran continues from it (for compression: the model's own module, "
                   "its context included; without such --steps, compression trains the profile's design afresh).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="Training steps in bfloat16 autocast (float32 weights) or float32; auto: bf16 where the device "
                   "computes it natively (AMX or AVX-512 BF16 CPUs, most GPUs), about 2.5x faster there.")
@threads_option
def train(train_dir, valid_dir, work, output, stages, step_overrides, seed, profile, device, start_from, precision,
          threads):
    """Train a model from folders of images (resumable; runs unchanged under torchrun; see docs/training.md)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from .training.precision import set_precision

    set_precision(precision)
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
    if start_from:
        from .model import ModelError, read_config

        try:
            read_config(start_from)
        except ModelError as e:
            fail(str(e), EXIT_USAGE)
    run(train_dir, valid_dir, work, output, profile=profile, stages=chosen, steps=steps, seed=seed,
        device=str(resolve_device(device)), start_from=start_from, log=lambda m: click.echo(m, err=True))


# -- eval ------------------------------------------------------------------------------------------
def _csv_list(kind):
    def parse(ctx, param, value):
        if value.strip().lower() in ("", "none"):
            return []
        try:
            return list(dict.fromkeys(kind(v) for v in value.split(",") if v.strip()))  # repeats once
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {kind.__name__}s, got {value!r}") from None

    return parse


@main.command("eval", cls=_Command)
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("-l", "--lambda", "lambdas", default="0.1,0.25,0.5,1,2", show_default=True,
              callback=_csv_list(float), help="Comma-separated λ values; one .rdc file per image and λ.")
@click.option("-s", "--steps", "steps", default="2,5", show_default=True, callback=_csv_list(int),
              help="Comma-separated step counts; each .rdc file is decoded once per count.")
@click.option("-b", "--baselines", default="jpeg,webp,avif,avif-half,jxl", show_default=True,
              callback=_csv_list(str), help="Baseline codecs matched to each .rdc file's rate ('none': no baselines).")
@click.option("-o", "--output", "out_dir", default="report", show_default=True, type=click.Path(file_okay=False),
              help="Report folder: results.json, results.csv, summary.md, rd_*.png, index.html, files/, crops/.")
@click.option("-n", "--limit", type=click.IntRange(1), default=None, help="Only the first N images (by name).")
@click.option("-d", "--detail", type=float, default=1.0, show_default=True, help="Decoder detail guidance.")
@click.option("--crop", type=click.IntRange(16), default=256, show_default=True,
              help="Side of the centre crops shown in index.html (display only: photos are coded whole).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Baseline cache folder: each photo's baseline results are computed once and reused by "
                   "later runs, of any model [default: $XDG_CACHE_HOME/rdeic/eval, else ~/.cache/rdeic/eval].")
@click.option("--no-cache", is_flag=True, help="Compute every baseline result; read and write no cache.")
@click.option("--refine", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="Encoder refinement steps of every rdeic file (as rdeic encode --refine).")
@click.option("--metrics-module", "metric_modules", multiple=True, metavar="MODULE",
              help="Import MODULE first; it may register more metrics (LPIPS, DISTS, FID), "
                   "see rdeic_codec/evaluation/registry.py. Repeatable.")
@model_option
@device_option
@threads_option
@quiet_option
@force_option
@half_option
def eval_command(folder, lambdas, steps, baselines, out_dir, limit, detail, crop, cache_dir, no_cache,
                 refine, metric_modules, model_dir, device, threads, quiet, force, half):
    """Evaluate rdeic on the images in FOLDER against baseline codecs at matched rates.

    Every image is coded whole (neither cropped nor resized): encoded to an .rdc file per λ and
    decoded per step count; each baseline gets the largest file not exceeding that .rdc file's
    size. Rates are file sizes over the original pixel count. Reports bpp, PSNR, MS-SSIM, NIQE and
    encode/decode seconds per image and on average in OUTPUT/results.json, results.csv and
    summary.md (Markdown averages), rate-quality plots (rd_*.png) and index.html with crops.
    Baseline results are kept per photo in the cache (--cache), so the next model's run reuses them.
    Ctrl-C keeps what was finished.
    """
    import importlib

    from .evaluation.baselines import CODECS, BaselineUnavailable, get_codec

    if not lambdas or not steps:
        raise click.BadParameter("give at least one value", param_hint="--lambda/--steps")
    if unknown := [b for b in baselines if b not in CODECS]:
        raise click.BadParameter(f"unknown codec(s) {', '.join(unknown)}; known: {', '.join(CODECS)}",
                                 param_hint="--baselines")
    if bad := [s for s in steps if not 0 <= s <= 10]:
        raise click.BadParameter(f"step counts must be 0..10, got {bad}", param_hint="--steps")
    if no_cache and cache_dir is not None:
        raise click.BadParameter("give --cache DIR or --no-cache, not both", param_hint="--cache")
    try:
        for name in baselines:
            get_codec(name).require()
    except BaselineUnavailable as e:
        fail(str(e))
    old_report = os.path.exists(os.path.join(out_dir, "results.json"))
    if old_report and not force:
        fail(f"{out_dir} already holds a report (results.json); use --force to replace it")
    if metric_modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in metric_modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            fail(f"--metrics-module {name}: {e}")
    from PIL import Image

    from .evaluation.cache import default_cache_dir
    from .evaluation.report import cache_line
    from .evaluation.runner import EvalSettings, Runner, list_images

    paths = list_images(folder, limit)
    if not paths:
        fail(f"{folder} holds no images (looked for PNG, JPEG, WebP, TIFF, BMP, PPM)")
    for path in paths:  # headers only: unreadable files fail before any work
        try:
            Image.open(path).close()
        except Exception as e:  # noqa: BLE001 - any reason becomes one line naming the file
            fail(f"{path}: not a readable image ({e})")
    model = _load(model_dir, device, threads, half)
    from . import codec

    for lam in lambdas:
        codec.check_lambda(model, lam)
    import torch

    from .model import resolve_model_dir

    meta = {"rdeic_version": __version__, "torch_version": torch.__version__,
            "model_dir": os.path.abspath(resolve_model_dir(model_dir)), "model_name": model.config.get("name"), "model_id": model.model_id.hex(),
            "device": str(next(model.parameters()).device), "threads": torch.get_num_threads(), "half": half,
            "folder": os.path.abspath(folder), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if no_cache:
        cache_dir = None
    elif cache_dir is None:
        cache_dir = default_cache_dir()
    settings = EvalSettings(lambdas, steps, baselines, detail, crop, cache_dir, refine)
    if old_report:  # --force: the old run's files would otherwise linger beside the new ones
        import shutil

        for sub in ("files", "crops"):
            shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
    t0 = time.perf_counter()
    runner = Runner(model, out_dir, settings, meta, progress=False if quiet else None)
    try:
        results = runner.run(paths)
    except KeyboardInterrupt:
        fail(f"interrupted; the finished part is in {os.path.join(out_dir, 'index.html')}", 130)
    _stats(quiet, f"{os.path.join(out_dir, 'index.html')}: {len(results.images)} whole photos, "
                  f"{len(results.rows)} rows, {time.perf_counter() - t0:.1f} s")
    if baselines:
        _stats(quiet, cache_line(results))


if __name__ == "__main__":
    main()
