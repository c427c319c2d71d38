"""Many files in one run (``rdeic encode a.png b.png -o OUTDIR/``): output names, a file counter, and
failures that do not stop the other files.

The model is loaded once by the caller; each file is one job. Problems known before any work (two
inputs with one output name, an output that is one of the inputs, an existing output without
``--force``) fail that file only. A failing file is reported and the run goes on; the caller lists the
failures at the end and exits 1.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Job:
    input: str
    output: str
    problem: str | None = None  # why this file fails before any work, if it does


@dataclass
class Failure:
    input: str
    reason: str


def plan(inputs: list[str], out_dir: str, suffix: str, force: bool) -> list[Job]:
    """One job per input: OUTDIR/<stem><suffix>, with what already rules it out.

    Args:
        inputs: input paths, in the order given (a repeated path counts once).
        out_dir: the output folder (need not exist yet).
        suffix: the output extension, e.g. ``.rdc``.
        force: replace existing outputs.
    """
    from .imageio import is_stream

    inputs = list(dict.fromkeys(inputs))
    input_keys = {_key(p): p for p in inputs}
    jobs, claimed = [], {}
    for path in inputs:
        output = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + suffix)
        job = Job(path, output)
        key = _key(output)
        if key in claimed:
            job.problem = f"{claimed[key]} goes to {output} too; rename one of them"
        elif key in input_keys:
            job.problem = f"its output {output} is the input {input_keys[key]}; refusing to overwrite an input"
        elif os.path.isdir(output):
            job.problem = f"{output} is a directory"
        elif os.path.exists(output) and not force and not is_stream(output):  # a device or pipe is written into
            job.problem = f"{output} exists; use --force to replace it"
        claimed.setdefault(key, path)
        jobs.append(job)
    return jobs


def _key(path: str) -> str:
    """A path's identity: the same file through links and relative paths gives the same key."""
    return os.path.normcase(os.path.realpath(path))


def prepare_out_dir(out_dir: str) -> None:
    """Create the output folder (and its parents) if needed; a file in its place is an error."""
    from .imageio import ImageError

    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ImageError(f"-o {out_dir}: not a directory")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ImageError(f"cannot create {out_dir}: {e.strerror or e}") from None


class FileProgress:
    """Counts finished files on stderr: a bar on a terminal, ``[k/n]`` before each line otherwise.

    Args:
        total: number of files.
        quiet: print nothing (failures are still returned to the caller).
        stream: where to write (default stderr).
    """

    WIDTH = 30

    def __init__(self, total: int, quiet: bool = False, stream=None):
        self.total, self.quiet, self.done_count = total, quiet, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._draw()

    def done(self, line: str) -> None:
        self.done_count += 1
        if self.quiet:
            return
        if self.tty:
            self.stream.write(f"\r\x1b[K{line}\n")
        else:
            self.stream.write(f"[{self.done_count}/{self.total}] {line}\n")
        self._draw()

    def _draw(self) -> None:
        if self.quiet or not self.tty:
            return
        filled = self.WIDTH * self.done_count // max(self.total, 1)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done_count}/{self.total} files")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def run(jobs: list[Job], work: Callable[[Job], str], progress: FileProgress) -> list[Failure]:
    """Run ``work`` on every job; returns the failures.

    ``work`` returns the file's stats line. Bad input (any ``ValueError``: the codec's, the container's,
    the image reader's errors) fails the file with its one-line reason; anything else unexpected fails
    it too, named as an internal error, so one file never stops the others. Ctrl-C stops the run, and
    so does a full disk: every later file would fail the same way, after its work was spent; the files
    not started are listed as failures.
    """
    from .imageio import WriteError, is_stream

    failures = []
    disk_full = False
    for job in jobs:
        reason = job.problem
        if reason is None and disk_full:
            reason = "not started: the disk is full"
        elif reason is None:
            try:
                progress.done(work(job))
                continue
            except WriteError as e:
                reason = str(e)
                # A full device (a /dev/full node) is this output only; a full disk is every later one too.
                disk_full = e.errno == errno.ENOSPC and not is_stream(job.output)
            except ValueError as e:
                reason = str(e)
            except MemoryError:
                reason = "out of memory (try a smaller image, or --device cuda)"
            except Exception as e:  # noqa: BLE001 - one broken file must not stop the batch
                reason = f"internal error ({type(e).__name__}: {e})"
        if reason.startswith(f"{job.input}: "):  # the reader's messages name the file already
            reason = reason[len(job.input) + 2:]
        failures.append(Failure(job.input, reason))
        progress.done(f"{job.input}: failed: {reason}")
    progress.close()
    return failures


def summary(failures: list[Failure], total: int) -> str:
    """The closing report: the failed files, one per line under a one-line heading."""
    lines = [f"rdeic: error: {len(failures)} of {total} files failed:"]
    lines += [f"  {f.input}: {f.reason}" for f in failures]
    return "\n".join(lines)


def elapsed(t0: float) -> str:
    return f"{time.perf_counter() - t0:.1f} s"
