"""An RDEIC model: config + safetensors weights in a directory, loaded into one module.

Directory layout (diffusers-style, a config saved beside the weights)::

    config.json                 profile config, name, model_id
    compression.safetensors     compression module (defines the bitstream)
    control.safetensors         control module
    unet.safetensors            base denoiser and the stored cross-attention context
    vae.safetensors             latent autoencoder

The model id is the first 4 bytes of a SHA-256 over the config (without the id) and every weight
file; it is written into every ``.rdc`` file, and a model whose files do not hash to its id is
refused. Weights are read only from safetensors: no pickle is ever loaded.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os

import torch
from torch import nn

from .profiles import REQUIRED_SECTIONS

COMPONENTS = ("compression", "control", "unet", "vae")
HALF_COMPONENTS = ("vae", "unet", "control")  # what use_half casts; the compression module stays float32
ENCODER_COMPONENTS = ("compression", "vae")  # all that encoding runs


def default_model_dir() -> str:
    """The shipped model: package data in an installed wheel (``rdeic_codec/default_model``, see
    setup.py), or ``models/rdeic-small`` of the checkout this package runs from."""
    here = os.path.dirname(os.path.abspath(__file__))
    packaged = os.path.join(here, "default_model")
    if os.path.isfile(os.path.join(packaged, "config.json")):
        return packaged
    return os.path.join(os.path.dirname(here), "models", "rdeic-small")


DEFAULT_MODEL = default_model_dir()


def resolve_model_dir(folder: str | None = None) -> str:
    """The model directory to use: ``folder`` (``--model``), else ``$RDEIC_MODEL``, else the shipped model."""
    return folder or os.environ.get("RDEIC_MODEL") or DEFAULT_MODEL


class ModelError(ValueError):
    """A model directory is missing, incomplete or inconsistent."""


class RDEICModel(nn.Module):
    """All networks of one RDEIC model.

    Args:
        config: a profile config (see :mod:`rdeic_codec.profiles`), with optional ``name``/``model_id``.
        parts: the networks to build; :data:`ENCODER_COMPONENTS` is all that encoding needs (the
            others are then None).
    """

    def __init__(self, config: dict, parts: tuple[str, ...] = COMPONENTS):
        super().__init__()
        from .networks.autoencoder import build_vae
        from .networks.compression import build_compression

        self.config = copy.deepcopy(config)
        self.parts = tuple(p for p in COMPONENTS if p in parts)
        self.compression = build_compression(config["compression"])
        self.vae = build_vae(config["vae"])
        self.unet = self.control = None
        if "unet" in parts or "control" in parts:  # the control module is sized from the UNet
            from .networks.control import ControlModule, build_unet

            self.unet = build_unet(config["unet"])
            self.control = ControlModule(config["control"], config["unet"], config["compression"]["guide_channels"],
                                         self.unet)
            # The stored cross-attention context (SD: the empty prompt's text embedding).
            self.unet.register_buffer("context", torch.zeros(config["context_shape"]))
            self.parts = COMPONENTS
        self._entropy_path = None

    @property
    def model_id(self) -> bytes:
        return bytes.fromhex(self.config["model_id"])

    def component(self, name: str) -> nn.Module:
        return getattr(self, name)

    def entropy_path(self):
        """Float64 CPU copies of what derives the entropy parameters (hyper-latent prior, h_s, context nets)."""
        if self._entropy_path is None:
            comp = self.compression
            self._entropy_path = nn.ModuleDict({
                "quantize": copy.deepcopy(comp.quantize).to("cpu", torch.float64),
                "h_s": copy.deepcopy(comp.h_s).to("cpu", torch.float64),
                "context": copy.deepcopy(comp.context).to("cpu", torch.float64),
            }).eval()
        return self._entropy_path


def _file_digest(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def compute_model_id(folder: str, config: dict) -> str:
    h = hashlib.sha256()
    body = {k: v for k, v in config.items() if k != "model_id"}
    h.update(json.dumps(body, sort_keys=True).encode())
    for name in COMPONENTS:
        h.update(_file_digest(os.path.join(folder, f"{name}.safetensors")))
    return h.hexdigest()[:8]


HALF_MIN_ELEMENTS = 1024
STORAGE_DTYPES = ("float16", "float32")
# Kept in float32 whatever the storage dtype: the index prior (it sets the side information's
# frequencies) and the stored cross-attention context (one tensor that every UNet and control
# attention layer reads at every step; float16 storage moved the paper model's by 2.1e-4, issue 12).
FULL_PRECISION_KEYS = ("embed_prob", "context")


def _storage(t: torch.Tensor, key: str = "", dtype: str = "float16") -> torch.Tensor:
    """The tensor as stored. ``float16``: weight tensors in float16 (half the download); small tensors
    (biases, gains, λ anchors) and :data:`FULL_PRECISION_KEYS` stay float32 where precision matters and
    size does not. ``float32``: everything as it is. Loading casts everything back to float32, and the
    decoder's float64 entropy path starts from these stored values, so encoder and decoder still see
    identical numbers."""
    t = t.detach().contiguous().cpu()
    if (dtype == "float16" and t.is_floating_point() and t.numel() >= HALF_MIN_ELEMENTS
            and key.split(".")[-1] not in FULL_PRECISION_KEYS):
        return t.half()
    return t


def save_model(model: RDEICModel, folder: str, name: str | None = None, extra: dict | None = None,
               dtype: str = "float16") -> str:
    """Write a model directory; returns the model id (8 hex digits).

    Args:
        model: the model.
        folder: the directory to write (created if needed).
        name: model name for config.json.
        extra: more config.json fields (``lambda``, ...).
        dtype: storage of the weights (see :func:`_storage`): ``float16`` (this project's models: half
            the size) or ``float32`` (converted models: the authors' values exactly).

    The in-memory model is rounded to what was stored, so it behaves exactly like a reloaded copy.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, not {dtype!r}")
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    model._entropy_path = None
    for comp in COMPONENTS:
        state = {k: _storage(v, k, dtype) for k, v in model.component(comp).state_dict().items()}
        path = os.path.join(folder, f"{comp}.safetensors")
        save_file(state, path)
        # safetensors writes its files 0600; a model directory is meant to be shared like any other file.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(path, 0o666 & ~mask)
    config = {k: v for k, v in model.config.items() if k != "model_id"}
    if name:
        config["name"] = name
    if extra:
        config.update(extra)
    config["model_id"] = compute_model_id(folder, config)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    model.config = config
    with torch.no_grad():
        for comp in COMPONENTS:
            for k, v in model.component(comp).state_dict().items():
                if v.is_floating_point():
                    v.copy_(_storage(v, k, dtype).to(v.dtype))
    return config["model_id"]


def read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        raise ModelError(f"model directory {folder} does not exist")
    if not os.path.exists(path):
        raise ModelError(f"{folder} has no config.json; it is not an rdeic model directory")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: bad JSON, or bytes that are not UTF-8
        raise ModelError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a JSON object")
    missing = [k for k in REQUIRED_SECTIONS + ("model_id",) if k not in config]
    if missing:
        raise ModelError(f"{path} lacks the field(s) {', '.join(missing)}")
    return config


def load_model(folder: str | None = None, device: str | torch.device = "cpu", verify: bool = True,
               half: bool = False, parts: tuple[str, ...] = COMPONENTS) -> RDEICModel:
    """Load a model directory (``--model``, else ``$RDEIC_MODEL``, else the shipped model).

    The networks are built without initialising their weights (:func:`_skip_init`): their tensors are
    allocated but never written, so the memory is not touched (the paper profile, 1026 M parameters,
    builds at 309 MB peak RSS against 303 MB on the meta device, where constructors that compute
    anything, as the small profile's gain init, would import torch's Python meta kernels, about 1 s).
    Each stored tensor is then read once from its safetensors file, cast to the dtype it runs in
    (float32, or float16 for :func:`use_half`'s parts) and put in place of the empty one: a float16 file
    loaded with ``half`` is never widened, and memory holds one copy of the weights plus one tensor in
    flight.

    Args:
        folder: model directory.
        device: where the networks run; the entropy path always runs on the CPU in float64.
        verify: check that the files hash to the model id in the config.
        half: run the autoencoder, UNet and control module in float16 (see :func:`use_half`).
        parts: the networks to load (:data:`ENCODER_COMPONENTS` for encoding only); the model id is
            checked over every file in any case.
    """
    folder = resolve_model_dir(folder)
    config = read_config(folder)
    for comp in COMPONENTS:
        if not os.path.exists(os.path.join(folder, f"{comp}.safetensors")):
            raise ModelError(f"{folder} lacks {comp}.safetensors")
    if verify and compute_model_id(folder, config) != config["model_id"]:
        raise ModelError(f"the weights in {folder} do not match its model id {config['model_id']} "
                         "(files changed or damaged)")
    try:
        with _skip_init():
            model = RDEICModel(config, parts)
        _check_coding_config(config)
    except Exception as e:  # noqa: BLE001 - anything a malformed config makes the constructors raise
        reason = f"field {e.args[0]!r} is missing" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ModelError(f"{folder}/config.json is not a valid rdeic config: {reason}") from None
    device = torch.device(device)
    for comp in COMPONENTS:
        path = os.path.join(folder, f"{comp}.safetensors")
        if comp in model.parts:
            dtype = torch.float16 if half and comp in HALF_COMPONENTS else torch.float32
            _load_component(model.component(comp), path, comp, dtype, device)
            # What is not stored (none today) follows; the rest is in place already. nn.Module.to, not
            # diffusers' override, which warns on every dtype argument.
            nn.Module.to(model.component(comp), device, dtype)
        else:
            _check_readable(path, comp)
    model.eval()
    # The autoencoder runs at full resolution, where channels-last convolutions are faster (measured on
    # the 2-core CPU at 768×512: VAE decoder 1.83 → 1.39 s, encoder 0.62 → 0.45 s); the results differ
    # from the default layout only by float rounding, and the entropy-coding path does not depend on it.
    model.vae.to(memory_format=torch.channels_last)
    return model


def _load_component(module: nn.Module, path: str, comp: str, dtype: torch.dtype, device: torch.device) -> None:
    """Read one safetensors file into a module built by :func:`_skip_init`, tensor by tensor.

    Floating tensors of any stored precision become ``dtype``; anything else must match exactly.
    """
    from .weights import WeightFileError, iter_tensors

    expected = module.state_dict()  # names and dtypes of the empty tensors

    def cast(key, stored):
        want = expected.get(key)
        if want is not None and stored != want.dtype and not (stored.is_floating_point and want.is_floating_point()):
            raise ModelError(f"{comp}.safetensors does not fit the config: {key} is {stored}, not {want.dtype}")
        return dtype if stored.is_floating_point else None

    try:
        state = {key: tensor.to(device) for key, tensor in iter_tensors(path, cast)}
    except WeightFileError as e:
        raise ModelError(f"cannot read {comp}.safetensors: {e}") from None
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelError(f"{comp}.safetensors does not fit the config: {_first_reason(e)}") from None


def _check_readable(path: str, comp: str) -> None:
    """Read only the header of a weight file that is not loaded: it must be a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        raise ModelError(f"cannot read {comp}.safetensors: {e}") from None


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                   "sparse_")


@contextlib.contextmanager
def _skip_init():
    """Make ``torch.nn.init``'s functions no-ops while networks are built whose weights are loaded next.

    Initialising is the time and memory of building: random init writes every weight (36 MB for the
    small profile, 4.1 GB for the paper's), and on the meta device it imports torch's Python reference
    kernels (2.5 s on the 2-core CPU, measured with cProfile). Tensors made other ways (zeros, full)
    keep their values, so buffers that are not stored are still right.
    """
    from torch.nn import init

    saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS if hasattr(init, name)}
    try:
        for name in saved:
            setattr(init, name, _return_tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def _return_tensor(tensor, *args, **kwargs):
    return tensor


def use_half(model: RDEICModel) -> RDEICModel:
    """Cast the diffusion networks and the autoencoder to float16, halving their memory and, on a GPU,
    most of their time. The compression module stays float32: its output defines the bitstream, and the
    entropy coding runs on float64 copies in any case, so files stay decodable by a float32 decoder
    (the pixels then differ only by float16 rounding)."""
    for part in HALF_COMPONENTS:
        if model.component(part) is not None:
            model.component(part).half()
    return model


def network_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _check_coding_config(config: dict) -> None:
    """Build what the codec derives from the entropy and diffusion sections, so a bad value fails at load."""
    from .entropy.tables import ScaleTable
    from .sampler import MAX_STEPS, step_coefficients

    table = ScaleTable(config["entropy"])
    if not (table.num >= 2 and 0 < table.smin < table.smax and int(table.max_symbol) == table.max_symbol >= 1):
        raise ValueError("entropy section is out of range")
    table.snap_mean(torch.zeros(1, dtype=torch.float64))
    step_coefficients(config["diffusion"], MAX_STEPS)


def _first_reason(error: RuntimeError) -> str:
    """One line from load_state_dict's message ("Error(s) in loading state_dict for X:" then the reasons)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[1] if len(lines) > 1 else lines[0] if lines else "unknown error"
    return reason if len(reason) <= 200 else reason[:197] + "..."
