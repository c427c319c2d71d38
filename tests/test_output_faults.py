"""Outputs under faults (issue 23): full disks, devices, pipes whose reader leaves, read-only and vanished
folders. What a user checks: the exit status, one line on stderr (no traceback, no stats line claiming
success), the device still a device, what the reader received, and no partial or temporary file.

Device nodes and filesystems are the test's own (mknod and tmpfs mounts under tmp_path, as root); rdeic
is never pointed at the system's /dev. Where mounting is not allowed, the same faults are injected;
both variants run where they can. The hostile-input cases are in test_robustness.py.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner
from PIL import Image

from rdeic_codec import batch, imageio
from rdeic_codec.cli import main

from conftest import ROOT, smooth_image

RDEIC = [sys.executable, os.path.join(ROOT, "bin", "rdeic")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PAGE = mmap.PAGESIZE  # tmpfs hands out whole pages
BIG = (200, 300)  # (height, width): its decoded image (BMP 180 kB, PNG ~150 kB) is more than a pipe holds


# -- helpers ---------------------------------------------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def run(*args, **kwargs):
    """The real process (real file descriptors for standard output)."""
    return subprocess.run(RDEIC + [str(a) for a in args], env=ENV, **kwargs)


def assert_one_line_error(exit_code, stderr, *fragments):
    assert exit_code == 1, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("rdeic: error: "), stderr  # no stats line either
    for fragment in fragments:
        assert fragment in stderr, stderr


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.fixture
def model(tiny_model_dir):
    return ["--model", tiny_model_dir, "--threads", "1"]


@pytest.fixture
def rdc_file(tmp_path, src_png, model):
    path = tmp_path / "a.rdc"
    assert invoke("encode", src_png, path, *model).exit_code == 0
    return path


@pytest.fixture
def big_rdc(tmp_path, model):
    png, path = tmp_path / "big.png", tmp_path / "big.rdc"
    Image.fromarray(smooth_image(*BIG)).save(png)
    assert invoke("encode", png, path, *model).exit_code == 0
    return path


@pytest.fixture
def devices(tmp_path):
    """Our own null (1, 3) and full (1, 7) character devices in tmp_path."""
    folder = tmp_path / "dev"
    folder.mkdir()
    nodes = {}
    for name, minor in (("null", 3), ("full", 7)):
        try:
            os.mknod(folder / name, stat.S_IFCHR | 0o666, os.makedev(1, minor))
        except OSError as e:
            pytest.skip(f"cannot make device nodes here ({e.strerror}; needs root)")
        nodes[name] = folder / name
    return nodes


def still_device(path, minor) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, minor)


def mount_tmpfs(path, options) -> bool:
    """Mount a tmpfs at path (created); False where this is not allowed (not root, a container)."""
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def unmount(path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


class SmallDiskFile:
    """Injected full disk: a file that takes what fits in budget["left"] bytes (whole pages), then ENOSPC.
    A failed file is removed by rdeic, so it uses up nothing."""

    def __init__(self, f, budget):
        self.f, self.budget = f, budget

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        pages = -(-len(data) // PAGE) * PAGE
        if pages > self.budget["left"]:
            self.f.write(data[: self.budget["left"]])  # a partial file, as on a real disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget["left"] -= pages
        return self.f.write(data)


class SmallDisk:
    """A folder on a nearly full disk: ``fill(free_pages)`` leaves that many pages free.

    tmpfs: a 4-page tmpfs filled up with a file; injected: rdeic's file writes raise ENOSPC once that
    many pages are used.
    """

    def __init__(self, folder, monkeypatch=None):
        self.folder, self.monkeypatch = folder, monkeypatch

    def fill(self, free_pages: int) -> None:
        if self.monkeypatch is not None:
            budget = {"left": free_pages * PAGE}
            real_fdopen = os.fdopen
            self.monkeypatch.setattr(imageio.os, "fdopen",
                                     lambda fd, *a, **k: SmallDiskFile(real_fdopen(fd, *a, **k), budget))
            return
        filler = self.folder / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, bytes(PAGE))
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        os.truncate(filler, os.path.getsize(filler) - free_pages * PAGE)


@pytest.fixture(params=["tmpfs", "injected"])
def small_disk(request, tmp_path, monkeypatch):
    folder = tmp_path / "disk"
    if request.param == "injected":
        folder.mkdir()
        return SmallDisk(folder, monkeypatch)
    if not mount_tmpfs(folder, f"size={4 * PAGE}"):
        pytest.skip("cannot mount a tmpfs here")
    request.addfinalizer(lambda: unmount(folder))
    return SmallDisk(folder)


@pytest.fixture(params=["tmpfs", "injected"])
def read_only_dir(request, tmp_path, monkeypatch):
    """A read-only folder: a read-only tmpfs mount (root ignores mode bits), or EROFS injected."""
    folder = tmp_path / "ro"
    if request.param == "tmpfs":
        if not mount_tmpfs(folder, f"ro,size={4 * PAGE}"):
            pytest.skip("cannot mount a tmpfs here")
        request.addfinalizer(lambda: unmount(folder))
    else:
        folder.mkdir()
        real_mkstemp = imageio.tempfile.mkstemp

        def read_only(*args, dir=None, **kwargs):
            if dir is not None and os.path.samefile(dir, folder):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(imageio.tempfile, "mkstemp", read_only)
    return folder


def read_from_fifo(path, limit: int | None = None):
    """A reader thread: takes `limit` bytes (all if None) and closes its end. Returns (thread, received)."""
    received = bytearray()

    def read():
        fd = os.open(path, os.O_RDONLY)
        try:
            while limit is None or len(received) < limit:
                chunk = os.read(fd, 65536 if limit is None else limit - len(received))
                if not chunk:
                    break
                received.extend(chunk)
        finally:
            os.close(fd)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, received


# -- devices ------------------------------------------------------------------------------------------

def test_null_device_is_written_into_without_force(tmp_path, devices, src_png, rdc_file, model):
    os.symlink(devices["null"], tmp_path / "null-link")
    for out in (devices["null"], tmp_path / "null-link"):
        enc = invoke("encode", src_png, out, *model)
        assert enc.exit_code == 0 and f"{out}: 40x24" in enc.stderr, enc.stderr
        # No extension: a device gets what standard output gets (PNG), as `> /dev/null` would.
        dec = invoke("decode", rdc_file, out, "-s", "0", "-f", *model)
        assert dec.exit_code == 0 and f"{out}: 40x24" in dec.stderr, dec.stderr
        assert still_device(devices["null"], 3)
    assert os.path.islink(tmp_path / "null-link")
    assert not [n for n in listing(tmp_path) + listing(devices["null"].parent) if n.startswith(".rdeic-")]


@pytest.mark.parametrize("force", [[], ["-f"]])
def test_full_device_is_one_line_error_and_stays_a_device(tmp_path, devices, src_png, rdc_file, model, force):
    before = listing(tmp_path), listing(devices["full"].parent)
    enc = invoke("encode", src_png, devices["full"], *model, *force)
    assert_one_line_error(enc.exit_code, enc.stderr, f"cannot write {devices['full']}: No space left on device")
    dec = invoke("decode", rdc_file, devices["full"], "-s", "0", *model, *force)
    assert_one_line_error(dec.exit_code, dec.stderr, "No space left on device")
    assert still_device(devices["full"], 7)
    assert (listing(tmp_path), listing(devices["full"].parent)) == before


def test_standard_output_on_a_full_device(tmp_path, devices, src_png, model):
    with open(devices["full"], "wb") as full:  # our own node: opening it truncates nothing
        out = run("encode", src_png, "-", *model, stdout=full, stderr=subprocess.PIPE, text=True)
    assert "Exception ignored" not in out.stderr
    assert_one_line_error(out.returncode, out.stderr, "cannot write standard output: No space left on device")
    assert still_device(devices["full"], 7)


def test_dev_stdout_redirected_to_a_file_is_written_into(tmp_path, src_png, model):
    """`rdeic encode a.png /dev/stdout > out.rdc`: the shell's file is written through the descriptor, as
    `-` would, without --force and without renaming another file over it."""
    target = tmp_path / "out.rdc"
    with open(target, "wb") as f:
        out = run("encode", src_png, "/dev/stdout", *model, stdout=f, stderr=subprocess.PIPE, text=True)
    assert out.returncode == 0, out.stderr
    ref = run("encode", src_png, "-", *model, stdout=subprocess.PIPE).stdout
    assert target.read_bytes() == ref
    assert not [n for n in listing(tmp_path) if n.startswith(".rdeic-")]


# -- pipes --------------------------------------------------------------------------------------------

def test_fifo_is_written_into_without_force(tmp_path, src_png, rdc_file, model):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert invoke("encode", src_png, tmp_path / "ref.rdc", *model).exit_code == 0
    thread, received = read_from_fifo(fifo)
    enc = invoke("encode", src_png, fifo, *model)
    thread.join(60)
    assert enc.exit_code == 0 and bytes(received) == (tmp_path / "ref.rdc").read_bytes()
    thread, received = read_from_fifo(fifo)
    dec = invoke("decode", rdc_file, fifo, "-s", "0", *model)  # no extension: PNG
    thread.join(60)
    assert dec.exit_code == 0 and bytes(received[:8]) == b"\x89PNG\r\n\x1a\n"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and "fifo: 40x24" in dec.stderr


def test_fifo_reader_that_stops_early(tmp_path, big_rdc, model):
    ref = tmp_path / "ref.bmp"
    assert invoke("decode", big_rdc, ref, "-s", "0", *model).exit_code == 0
    fifo = tmp_path / "fifo.bmp"
    os.mkfifo(fifo)
    before = listing(tmp_path)
    thread, received = read_from_fifo(fifo, limit=100)
    dec = invoke("decode", big_rdc, fifo, "-s", "0", *model)
    thread.join(60)
    assert dec.exit_code == 141 and dec.stderr == ""  # quiet, as `cat big | head -c 100`: no stats line
    assert bytes(received) == ref.read_bytes()[:100]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and listing(tmp_path) == before


def test_standard_output_reader_that_stops_early(tmp_path, big_rdc, model):
    ref = tmp_path / "ref.png"
    assert invoke("decode", big_rdc, ref, "-s", "0", *model).exit_code == 0
    proc = subprocess.Popen(RDEIC + ["decode", str(big_rdc), "-", "-s", "0", *model], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        import fcntl

        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PAGE)  # Linux: the PNG is far more than this
    except (ImportError, AttributeError, OSError):
        pass
    received = b""
    while len(received) < 100:
        chunk = os.read(proc.stdout.fileno(), 100 - len(received))
        if not chunk:
            break
        received += chunk
    proc.stdout.close()  # as `| head -c 100` does
    stderr = proc.stderr.read().decode()
    assert proc.wait(120) == 141
    assert stderr == ""  # no traceback, no 'Exception ignored ... BrokenPipeError', no stats line
    assert received == ref.read_bytes()[:100]


# -- full, read-only and vanished folders ---------------------------------------------------------

def test_full_filesystem_leaves_nothing(small_disk, big_rdc, src_png, model):
    disk = small_disk.folder
    (disk / "old.bmp").write_bytes(b"old")
    small_disk.fill(1)  # room for an .rdc file, not for the 180 kB image: a partial temporary file
    before = listing(disk)
    for out, force in (("new.bmp", []), ("old.bmp", ["-f"])):
        dec = invoke("decode", big_rdc, disk / out, "-s", "0", *force, *model)
        assert_one_line_error(dec.exit_code, dec.stderr, f"cannot write {disk / out}: No space left on device")
    assert listing(disk) == before and (disk / "old.bmp").read_bytes() == b"old"
    assert invoke("encode", src_png, disk / "fits.rdc", *model).exit_code == 0  # the page it had is free


def test_read_only_folder(read_only_dir, src_png, rdc_file, model):
    enc = invoke("encode", src_png, read_only_dir / "x.rdc", *model)
    assert_one_line_error(enc.exit_code, enc.stderr, f"cannot write {read_only_dir / 'x.rdc'}: Read-only file system")
    dec = invoke("decode", rdc_file, read_only_dir / "x.png", "-s", "0", *model)
    assert_one_line_error(dec.exit_code, dec.stderr, "Read-only file system")
    assert listing(read_only_dir) == []


def test_output_folder_removed_while_coding(tmp_path, rdc_file, model, monkeypatch):
    from rdeic_codec import codec

    folder = tmp_path / "out"
    folder.mkdir()
    real_decode = codec.decode

    def decode_then_remove_folder(*args, **kwargs):
        pixels = real_decode(*args, **kwargs)
        shutil.rmtree(folder)  # after the output was checked, before it is written
        return pixels

    monkeypatch.setattr(codec, "decode", decode_then_remove_folder)
    dec = invoke("decode", rdc_file, folder / "x.png", "-s", "0", *model)
    assert_one_line_error(dec.exit_code, dec.stderr, f"cannot write {folder / 'x.png'}: No such file or directory")
    assert not folder.exists()


def test_a_link_to_a_file_is_followed_and_kept(tmp_path, src_png, model):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "target.rdc").write_bytes(b"old")
    os.symlink(elsewhere / "target.rdc", tmp_path / "link.rdc")
    refused = invoke("encode", src_png, tmp_path / "link.rdc", *model)
    assert_one_line_error(refused.exit_code, refused.stderr, "exists; use --force")
    assert invoke("encode", src_png, tmp_path / "link.rdc", "-f", *model).exit_code == 0
    assert os.path.islink(tmp_path / "link.rdc") and (elsewhere / "target.rdc").read_bytes()[:3] == b"RDC"
    assert listing(elsewhere) == ["target.rdc"]


# -- many files with -o OUTDIR ----------------------------------------------------------------------

@pytest.fixture
def three_pngs(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(smooth_image(24, 40, seed=i)).save(paths[-1])
    return paths


def test_batch_failing_outputs_are_listed_and_the_others_go_on(tmp_path, three_pngs, model, devices):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    sock = socket.socket(socket.AF_UNIX)  # a socket cannot be opened as a file
    sock.bind(str(out_dir / "p0.rdc"))
    os.symlink(devices["full"], out_dir / "p1.rdc")  # a full device is one output, not a full disk
    try:
        enc = invoke("encode", *three_pngs, "-o", out_dir, *model)
    finally:
        sock.close()
    assert enc.exit_code == 1 and "Traceback" not in enc.stderr
    tail = enc.stderr.splitlines()[-3:]
    assert tail[0] == "rdeic: error: 2 of 3 files failed:"
    assert tail[1].endswith("p0.png: cannot write " + str(out_dir / "p0.rdc") + ": No such device or address")
    assert tail[2].endswith("p1.png: cannot write " + str(out_dir / "p1.rdc") + ": No space left on device")
    assert (out_dir / "p2.rdc").read_bytes()[:3] == b"RDC" and still_device(devices["full"], 7)


def test_batch_stops_at_a_full_disk_and_keeps_what_was_finished(small_disk, three_pngs, tmp_path, model):
    assert invoke("encode", three_pngs[0], tmp_path / "ref.rdc", *model).exit_code == 0
    out_dir = small_disk.folder / "out"
    out_dir.mkdir()
    small_disk.fill(1)  # one .rdc file fits
    enc = invoke("encode", *three_pngs, "-o", out_dir, *model)
    assert enc.exit_code == 1 and "Traceback" not in enc.stderr
    lines = enc.stderr.splitlines()
    assert lines[0].startswith(f"[1/3] {out_dir / 'p0.rdc'}: 40x24")  # finished, and said so
    assert lines[-3:] == ["rdeic: error: 2 of 3 files failed:",
                          f"  {three_pngs[1]}: cannot write {out_dir / 'p1.rdc'}: No space left on device",
                          f"  {three_pngs[2]}: not started: the disk is full"]
    assert listing(out_dir) == ["p0.rdc"]
    assert (out_dir / "p0.rdc").read_bytes() == (tmp_path / "ref.rdc").read_bytes()


def test_batch_output_folder_removed_midway(tmp_path, three_pngs, model, monkeypatch):
    out_dir = tmp_path / "out"
    real_done = batch.FileProgress.done

    def done_then_remove(self, line):
        real_done(self, line)
        if self.done_count == 1:
            shutil.rmtree(out_dir)

    monkeypatch.setattr(batch.FileProgress, "done", done_then_remove)
    enc = invoke("encode", *three_pngs, "-o", out_dir, *model)
    assert enc.exit_code == 1 and "Traceback" not in enc.stderr
    assert enc.stderr.splitlines()[-3:] == [
        "rdeic: error: 2 of 3 files failed:",
        f"  {three_pngs[1]}: cannot write {out_dir / 'p1.rdc'}: No such file or directory",
        f"  {three_pngs[2]}: cannot write {out_dir / 'p2.rdc'}: No such file or directory"]
    assert not out_dir.exists()


# -- the Python API ---------------------------------------------------------------------------------

def test_the_api_writes_no_files(tiny_model_dir, src_png, monkeypatch):
    """Codec returns bytes and arrays; the caller writes them, so no output fault can happen inside it."""
    import builtins
    import tempfile

    from rdeic_codec import Codec

    api = Codec(tiny_model_dir, device="cpu")
    real_open, real_os_open = builtins.open, os.open

    def no_writing_open(file, mode="r", *args, **kwargs):
        assert not set(mode) & set("wax+"), f"the API opened {file} for writing"
        return real_open(file, mode, *args, **kwargs)

    def no_writing_os_open(path, flags, *args, **kwargs):
        assert not flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT), f"the API opened {path} for writing"
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_writing_open)
    monkeypatch.setattr(os, "open", no_writing_os_open)
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: pytest.fail("the API made a temporary file"))
    data = api.encode(str(src_png), lam=0.5)
    assert api.decode(data, steps=0).shape == (24, 40, 3)
