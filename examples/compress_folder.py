"""Compress a folder of photos with a pool of worker processes, each loading the model once.

    python examples/compress_folder.py photos/ out/ --workers 4 --bpp 0.05

This is the pattern to scale out with: one process per core (or per GPU), each holding one
:class:`rdeic_codec.Codec` and taking files from a queue. On a cluster, give each job its own slice of
the file list (e.g. ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``) and the same command.
A failing file is reported and the others go on; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys

# Run from a checkout without installing: this checkout's rdeic_codec (the workers re-run this too).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
_codec = None  # this worker's Codec, made once by _start
_start_error = None  # or why it could not be made (a pool restarts workers whose initializer raises, forever)


def _start(model: str | None, threads: int) -> None:
    global _codec, _start_error
    from rdeic_codec import Codec

    try:
        # One thread per worker: the pool, not torch, spreads the work over the cores.
        _codec = Codec(model, device="cpu", threads=threads)
    except ValueError as e:
        _start_error = f"the worker could not load the model: {e}"


def _compress(task: tuple[str, str, dict]) -> tuple[str, str | None, int]:
    """(input, error or None, bytes written): one file, written atomically, never over an existing one."""
    src, dst, rate = task
    if _start_error:
        return src, _start_error, 0
    from rdeic_codec.imageio import write_output

    try:
        data = _codec.encode(src, **rate)
        # rdeic's own writer: atomic for files, no temporary file left on a full disk, one-line errors.
        write_output(dst, data)
        return src, None, len(data)
    except ValueError as e:  # every bad-input and write error of rdeic is a ValueError with a one-line message
        return src, str(e), 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("out_dir")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--model", default=None)
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--lambda", dest="lam", type=float)
    rate.add_argument("--size", type=int, help="bytes per file")
    rate.add_argument("--bpp", type=float)
    p.add_argument("--shard", default="0/1", help="K/N: only every N-th file from the K-th (for job arrays)")
    p.add_argument("-f", "--force", action="store_true", help="replace existing outputs")
    args = p.parse_args(argv)

    k, n = (int(v) for v in args.shard.split("/"))
    names = sorted(f for f in os.listdir(args.folder) if f.lower().endswith(IMAGE_EXTENSIONS))[k::n]
    os.makedirs(args.out_dir, exist_ok=True)
    chosen = {key: v for key, v in (("lam", args.lam), ("size", args.size), ("bpp", args.bpp)) if v is not None}
    tasks = []
    for name in names:
        dst = os.path.join(args.out_dir, os.path.splitext(name)[0] + ".rdc")
        if os.path.exists(dst) and not args.force:
            print(f"skipping {name}: {dst} exists (use -f)", file=sys.stderr)
            continue
        tasks.append((os.path.join(args.folder, name), dst, chosen))
    failed = 0
    # spawn: each worker starts clean and loads its own model (no fork of a process holding torch threads).
    with mp.get_context("spawn").Pool(args.workers, initializer=_start, initargs=(args.model, args.threads)) as pool:
        for i, (src, error, size) in enumerate(pool.imap_unordered(_compress, tasks), 1):
            if error:
                failed += 1
                print(f"[{i}/{len(tasks)}] {src}: failed: {error}", file=sys.stderr)
            else:
                print(f"[{i}/{len(tasks)}] {src}: {size} bytes", file=sys.stderr)
    print(f"{len(tasks) - failed} of {len(tasks)} files compressed into {args.out_dir}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
