"""Convert the RDEIC authors' checkpoints into an rdeic model directory (``rdeic convert``).

Inputs (method file, section 8):

* the Stable Diffusion 2.1-base checkpoint ``v2-1_512-ema-pruned.ckpt`` (or ``.safetensors``), original
  LDM naming: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE),
  ``cond_stage_model.model.*`` (OpenCLIP ViT-H text tower); or a local diffusers folder of SD 2.1-base
  (``unet/``, ``vae/``, ``text_encoder/`` with safetensors weights);
* an RDEIC checkpoint such as ``rdeic_2_step2.ckpt``: ``control_model.*`` and ``preprocess_model.*``
  (any SD keys it also holds override those of the SD file, as when the authors load both).

Torch checkpoints are read with ``weights_only=True``: no code is ever unpickled. Every key is
accounted for: it is mapped to one of our tensors, or it matches one of the patterns of
:data:`IGNORED` (values we recompute or never use); anything else, and any of our tensors left
without a value, stops the conversion with an error that lists them.

The empty-prompt text embedding is computed here once, with a plain-torch copy of the OpenCLIP text
tower (penultimate layer, then the final layer norm, as SD 2.x does), and stored as ``unet.context``.
The token ids of "" are fixed ([start, end, then zeros]), so no tokenizer is needed.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .model import COMPONENTS, ModelError, RDEICModel, save_model
from .profiles import get_profile

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
CONTROL_PREFIX = "control_model.control_model."

# OpenCLIP's byte-pair vocabulary: <start_of_text>, <end_of_text>; padding is id 0.
SOT_TOKEN, EOT_TOKEN = 49406, 49407

_SCHEDULE = ("betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|"
             "log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|"
             "posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2")

# Keys that are read and deliberately not used: (regular expression matching the whole key, reason).
IGNORED = (
    (rf"({_SCHEDULE})", "noise schedule buffer, recomputed from the profile"),
    (r"lvlb_weights|logvar", "training loss weighting, unused at inference"),
    (r"model_ema\.(decay|num_updates)", "EMA bookkeeping"),
    # The fixed-step fine-tuned files may carry the LPIPS network of the training loss.
    (r"perceptual_loss\.(scaling_layer\.(shift|scale|mean|std)|net\.slice\d\.\d+\.(weight|bias)"
     r"|lin\d\.model\.\d\.weight)", "LPIPS network of the training loss"),
    (r"preprocess_model\.(?:\w+\.)*(_quantized_cdf|_offset|_cdf_length|scale_table)",
     "Gaussian CDF table, rebuilt at coding time"),
    (r"cond_stage_model\.model\.(logit_scale|text_projection|attn_mask)",
     "not used by the penultimate-layer text embedding"),
)

# Constants that compressai's GaussianConditional (1.2.4) registers as persistent buffers, so the
# authors' files hold them: (key, expected value, meaning). rdeic implements exactly these values
# (the scale bound is the profile's ``scale_min``, with the ``lower_bound_ceil`` scale rule), so a
# file with other values is refused instead of being coded with a rule it was not trained for.
GAUSSIAN_CONSTANTS = (
    ("preprocess_model.gaussian_conditional.likelihood_lower_bound.bound", 1e-9,
     "likelihood lower bound of the training rate (unused at coding time)"),
    ("preprocess_model.gaussian_conditional.lower_bound_scale.bound", "scale_min", "scale lower bound"),
    ("preprocess_model.gaussian_conditional.scale_bound", "scale_min", "scale lower bound"),
)

# Prefix renames of the authors' compression module (``preprocess_model``) to CompressionModule.
COMPRESSION_PREFIXES = (
    ("preprocess_model.encoder.g_a.", "g_a."),
    ("preprocess_model.hyper_enc.hyper_enc.", "h_a."),
    ("preprocess_model.hyper_dec.hyper_dec.", "h_s."),
    ("preprocess_model.decoder.g_s.", "g_s."),
    ("preprocess_model.out.", "out."),
    ("preprocess_model.local_context.", "context.local_context."),
    ("preprocess_model.channel_context.", "context.channel_context."),
    ("preprocess_model.entropy_parameters_anchor.", "context.entropy_parameters_anchor."),
    ("preprocess_model.entropy_parameters_nonanchor.", "context.entropy_parameters_nonanchor."),
    ("preprocess_model.quantize.", "quantize."),
)

# The control module's zero convs and injection multipliers.
CONTROL_RENAMES = (
    (r"control_model\.enc_zero_convs_out\.(\d+)\.0\.(weight|bias)", r"enc_zero_convs.\1.\2"),
    (r"control_model\.middle_block_out\.0\.(weight|bias)", r"middle_zero_conv.\1"),
    (r"control_model\.dec_zero_convs_out\.(\d+)\.0\.(weight|bias)", r"dec_zero_convs.\1.\2"),
    # The authors multiply scale_list by control_scale once more at run time; their released config
    # has control_scale = 1, so the stored list is the effective multiplier.
    (r"control_model\.scale_list", "scales"),
)

_TEXT_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_TEXT_LAYER_KEYS = {"ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.in_proj_weight",
                    "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias", "mlp.c_fc.weight",
                    "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"}
_TEXT_TOP_KEYS = {"token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias"}


class ConvertError(ModelError):
    """The checkpoints cannot be converted (unreadable, unknown or missing keys, wrong shapes)."""


@dataclass
class Mapped:
    """Result of mapping checkpoint keys: our tensors per component, text tower weights, bookkeeping."""

    components: dict = field(default_factory=lambda: {c: {} for c in COMPONENTS})
    source: dict = field(default_factory=dict)  # (component, our key) -> source key
    text: dict = field(default_factory=dict)  # OpenCLIP naming, prefix removed
    text_layers: int = 0  # transformer layers to run (SD 2.x: all but the last)
    ignored: list = field(default_factory=list)  # (source key, reason)
    unknown: list = field(default_factory=list)


# -- reading ---------------------------------------------------------------------------------------

def read_checkpoint(path: str) -> dict:
    """A checkpoint's tensors by name: a torch file (``weights_only``, the ``state_dict`` inside it if
    there is one) or a safetensors file."""
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
    import mmap
    import pickle

    try:
        try:
            # Private mapping: the model is written to later (save_model rounds it in place); those
            # writes must never reach the input file.
            with torch.serialization.set_default_mmap_options(mmap.MAP_PRIVATE):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # files in the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f"{path} holds objects other than tensors and plain containers; it is not read "
                           f"(no code is unpickled): {first}") from None
    except (OSError, RuntimeError, EOFError) as e:
        raise ConvertError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConvertError(f"{path} is not a checkpoint (a dict of tensors, or a dict with a 'state_dict')")
    bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ConvertError(f"{path}: entries that are not tensors: {_listing(bad)}")
    return obj


def _load_safetensors(path: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(path))
    except (SafetensorError, OSError) as e:
        raise ConvertError(f"cannot read {path}: {e}") from None


def read_diffusers_folder(folder: str) -> dict:
    """SD 2.1-base as a diffusers folder → {"unet": {...}, "vae": {...}, "text": (weights, layers)}."""

    def weights(sub: str, stem: str) -> dict | None:
        for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
            path = os.path.join(folder, sub, name)
            if os.path.exists(path):
                return _load_safetensors(path)
        return None

    unet, vae = weights("unet", "diffusion_pytorch_model"), weights("vae", "diffusion_pytorch_model")
    if unet is None or vae is None:
        raise ConvertError(f"{folder} is not a diffusers Stable Diffusion folder with safetensors weights "
                           "(needs unet/diffusion_pytorch_model.safetensors and vae/...)")
    # Older diffusers files name the VAE attention query/key/value/proj_attn.
    old = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
    vae = {_replace_all(k, old): v for k, v in vae.items()}
    out = {"unet": unet, "vae": vae, "text": None}
    text = weights("text_encoder", "model")
    if text is not None:
        cfg_path = os.path.join(folder, "text_encoder", "config.json")
        if os.path.exists(cfg_path):
            import json

            with open(cfg_path) as f:
                act = json.load(f).get("hidden_act", "gelu")
            if act != "gelu":
                raise ConvertError(f"{cfg_path}: hidden_act {act!r}; SD 2.x's text encoder uses 'gelu'")
        out["text"] = hf_text_to_openclip(text)
    return out


def hf_text_to_openclip(hf: dict) -> tuple[dict, int]:
    """transformers CLIPTextModel weights → OpenCLIP naming (the layers are all run: diffusers' SD 2.x
    text encoder already stops at the penultimate layer)."""
    out, unknown = {}, []
    top = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
           "text_model.embeddings.position_embedding.weight": "positional_embedding",
           "text_model.final_layer_norm.weight": "ln_final.weight",
           "text_model.final_layer_norm.bias": "ln_final.bias"}
    sub = {"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "self_attn.out_proj.": "attn.out_proj.",
           "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}
    qkv: dict = {}
    for k, v in hf.items():
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", k)
        if k in top:
            out[top[k]] = v
        elif k == "text_model.embeddings.position_ids":
            continue
        elif m and re.fullmatch(r"self_attn\.[qkv]_proj\.(weight|bias)", m.group(2)):
            part, kind = m.group(2)[10], m.group(2).split(".")[-1]
            qkv.setdefault((int(m.group(1)), kind), {})[part] = v
        elif m and any(m.group(2).startswith(s) for s in sub):
            out[f"transformer.resblocks.{m.group(1)}.{_replace_all(m.group(2), sub)}"] = v
        else:
            unknown.append(k)
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            unknown += [f"text_model.encoder.layers.{i}.self_attn.{p}_proj.{kind}" for p in parts]
            continue
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"transformer.resblocks.{i}.attn.{name}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if unknown:
        raise ConvertError(f"unknown text encoder keys: {_listing(sorted(unknown))}")
    layers = 1 + max((int(m.group(1)) for k in out if (m := _TEXT_LAYER.fullmatch(k))), default=-1)
    return out, layers


def _replace_all(key: str, table: dict) -> str:
    for a, b in table.items():
        key = key.replace(a, b)
    return key


# -- mapping ---------------------------------------------------------------------------------------

def _trace(helper, tensors: dict, rename, **kwargs) -> dict:
    """Run a diffusers LDM→diffusers key converter on shape-only stand-ins and return
    {diffusers key: source key}. The stand-ins are meta tensors, so this costs nothing at any size and
    shows exactly which source tensor each output came from (directly or as a reshaped view)."""
    stand_ins = {rename(k): torch.empty(tuple(v.shape), device="meta") for k, v in tensors.items()}
    owner = {id(t): k for k, t in zip(tensors, stand_ins.values())}
    out = helper(stand_ins, **kwargs)
    mapping = {}
    for key, t in out.items():
        src = None if t is None else owner.get(id(t), owner.get(id(t._base)) if t._base is not None else None)
        if src is None:
            raise ConvertError(f"cannot trace the diffusers conversion of {key!r} to a checkpoint key")
        mapping[key] = src
    return mapping


def _ldm_unet_mapping(tensors: dict, unet_config: dict, prefix: str) -> dict:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = {"layers_per_block": unet_config["layers_per_block"]}
    return _trace(convert_ldm_unet_checkpoint, tensors, lambda k: UNET_PREFIX + k[len(prefix):], config=config)


def _ldm_vae_mapping(tensors: dict, vae_config: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = {"down_block_types": vae_config["down_block_types"], "up_block_types": vae_config["up_block_types"]}
    return _trace(convert_ldm_vae_checkpoint, tensors, lambda k: k, config=config)


def _ignored_reason(key: str) -> str | None:
    for pattern, reason in IGNORED:
        if re.fullmatch(pattern, key):
            return reason
    return None


def map_checkpoint(state: dict, config: dict, use_text: bool = True, base: Mapped | None = None) -> Mapped:
    """Map an authors'-layout state dict (SD and/or RDEIC keys) onto our components.

    Works on meta tensors too (nothing is computed). ``base`` holds tensors already mapped from another
    source (a diffusers folder); what ``state`` maps overrides them.
    """
    res = base or Mapped()
    groups: dict[str, dict] = {"unet": {}, "vae": {}, "control": {}, "text": {}}
    constants = {key: (want, what) for key, want, what in GAUSSIAN_CONSTANTS}
    for key, value in state.items():
        reason = _ignored_reason(key)
        if key in constants:
            want, what = constants[key]
            want = config["entropy"][want] if isinstance(want, str) else want
            _check_constant(key, value, want, what)
            res.ignored.append((key, f"compressai constant, {what}: {want:g} (checked)"))
        elif reason is not None:
            res.ignored.append((key, reason))
        elif key.startswith(UNET_PREFIX):
            groups["unet"][key] = value
        elif key.startswith(VAE_PREFIX):
            groups["vae"][key] = value
        elif key.startswith(CONTROL_PREFIX):
            groups["control"][key] = value
        elif key.startswith(TEXT_PREFIX):
            if use_text:
                groups["text"][key[len(TEXT_PREFIX):]] = value
            else:
                res.ignored.append((key, "text tower not needed: the context was given with --context"))
        elif key.startswith("preprocess_model."):
            for old, new in COMPRESSION_PREFIXES:
                if key.startswith(old):
                    _put(res, "compression", new + key[len(old):], key, value)
                    break
            else:
                res.unknown.append(key)
        elif key.startswith("control_model."):
            for pattern, repl in CONTROL_RENAMES:
                if re.fullmatch(pattern, key):
                    _put(res, "control", re.sub(pattern, repl, key), key, value)
                    break
            else:
                res.unknown.append(key)
        else:
            res.unknown.append(key)

    for comp, tensors, mapping in (
        ("unet", groups["unet"], lambda t: _ldm_unet_mapping(t, config["unet"], UNET_PREFIX)),
        ("control", groups["control"], lambda t: _ldm_unet_mapping(t, config["unet"], CONTROL_PREFIX)),
        ("vae", groups["vae"], lambda t: _ldm_vae_mapping(t, config["vae"])),
    ):
        if not tensors:
            continue
        used = set()
        for ours, src in mapping(tensors).items():
            _put(res, comp, ours, src, tensors[src])
            used.add(src)
        res.unknown += [k for k in tensors if k not in used]

    if groups["text"]:
        _map_text(res, groups["text"])
    return res


def _check_constant(key: str, value: torch.Tensor, want: float, what: str) -> None:
    """A compressai constant must hold ``want`` (up to float32 rounding): rdeic implements that value."""
    if tuple(value.shape) not in ((), (1,)) or not value.is_floating_point():
        raise ConvertError(f"{key}: expected one floating-point value, found {value.dtype} {tuple(value.shape)}")
    if value.device.type == "meta":  # shape-only check (map_checkpoint on stand-ins)
        return
    got = float(value.reshape(()))
    if not math.isclose(got, want, rel_tol=1e-6):
        raise ConvertError(f"{key} is {got:g}; rdeic codes with the authors' {what} {want:g} and cannot "
                           "convert a model trained with another")


def _map_text(res: Mapped, text: dict) -> None:
    layer_ids = {int(m.group(1)) for k in text if (m := _TEXT_LAYER.fullmatch(k))}
    last = max(layer_ids, default=-1)
    res.text, res.text_layers = {}, last  # SD 2.x reads the penultimate layer: the last one is not run
    for key, value in text.items():
        m = _TEXT_LAYER.fullmatch(key)
        if m and int(m.group(1)) == last and m.group(2) in _TEXT_LAYER_KEYS:
            res.ignored.append((TEXT_PREFIX + key, "last text layer; SD 2.x uses the penultimate one"))
        elif key in _TEXT_TOP_KEYS or (m and m.group(2) in _TEXT_LAYER_KEYS):
            res.text[key] = value
        else:
            res.unknown.append(TEXT_PREFIX + key)


def _put(res: Mapped, comp: str, ours: str, src: str, value) -> None:
    res.components[comp][ours] = value
    res.source[(comp, ours)] = src


def expected_shapes(config: dict) -> dict:
    """{component: {key: shape}} of a model built from ``config`` (on the meta device)."""
    with torch.device("meta"):
        model = RDEICModel(config)
    return {c: {k: tuple(v.shape) for k, v in model.component(c).state_dict().items()} for c in COMPONENTS}


def check_complete(mapped: Mapped, config: dict, context_given: bool = False) -> dict:
    """Raise :class:`ConvertError` listing unknown keys, missing tensors and wrong shapes; return
    {component: state dict} with every tensor in our shape."""
    shapes = expected_shapes(config)
    unknown = list(mapped.unknown)
    missing, wrong, out = [], [], {}
    for comp in COMPONENTS:
        got = mapped.components[comp]
        want = shapes[comp]
        out[comp] = {}
        for key, value in got.items():
            if key not in want:
                unknown.append(mapped.source.get((comp, key), f"{comp}.{key}"))
                continue
            fitted = _fit(value, want[key])
            if fitted is None:
                src = mapped.source.get((comp, key), key)
                wrong.append(f"{src} {tuple(value.shape)} -> {comp}.{key} {want[key]}")
            else:
                out[comp][key] = fitted
        skip = {"context"} if comp == "unet" else set()  # filled from the text tower or --context
        missing += [f"{comp}.{k}" for k in want if k not in got and k not in skip]
    if not context_given and not mapped.text:
        missing.append(f"{TEXT_PREFIX}* (the SD text tower, for the empty-prompt context; or pass --context)")
    elif not context_given:
        need = _TEXT_TOP_KEYS | {f"transformer.resblocks.{i}.{n}" for i in range(mapped.text_layers)
                                 for n in _TEXT_LAYER_KEYS}
        missing += [TEXT_PREFIX + k for k in sorted(need - set(mapped.text))]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s): {_listing(sorted(unknown))}")
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_listing(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_listing(wrong)}")
    if problems:
        raise ConvertError("the checkpoints do not fit the model: " + "; ".join(problems))
    return out


def _fit(value: torch.Tensor, shape: tuple):
    """The tensor in our shape: as is, or reshaped when only singleton dimensions differ (LDM stores the
    VAE attention projections as 1×1 convolutions, diffusers as linear layers)."""
    if tuple(value.shape) == shape:
        return value
    if [d for d in value.shape if d != 1] == [d for d in shape if d != 1]:
        return value.reshape(shape)
    return None


def _listing(items, limit: int = 12) -> str:
    items = list(items)
    if len(items) <= limit:
        return ", ".join(items)
    prefixes: dict[str, int] = {}
    for it in items:
        p = ".".join(it.split(" ")[0].split(".")[:3])
        prefixes[p] = prefixes.get(p, 0) + 1
    groups = ", ".join(f"{p}.* ({n})" for p, n in sorted(prefixes.items()))
    return f"{', '.join(items[:limit])}, ... (by prefix: {groups})"


# -- the empty-prompt context ----------------------------------------------------------------------

def text_embedding(weights: dict, layers: int, context_shape) -> torch.Tensor:
    """The text tower's output for the empty prompt, (1, L, W) float32, computed in float64.

    OpenCLIP text transformer: token + positional embedding, ``layers`` pre-norm residual blocks
    (causal multi-head self-attention with heads of width 64, GELU MLP), then ``ln_final``.
    """
    _, length, width = context_shape
    pos = weights["positional_embedding"].double()
    if tuple(pos.shape) != (length, width):
        raise ConvertError(f"the text tower's positional embedding is {tuple(pos.shape)}, "
                           f"the model needs a context of {length}×{width}")
    tokens = torch.tensor([SOT_TOKEN, EOT_TOKEN] + [0] * (length - 2))[:length]
    x = weights["token_embedding.weight"][tokens].double() + pos
    heads = max(1, width // 64)
    mask = torch.full((length, length), -math.inf, dtype=torch.float64).triu(1)

    def ln(h, name):
        return F.layer_norm(h, (width,), weights[name + ".weight"].double(), weights[name + ".bias"].double())

    def lin(h, name):
        return F.linear(h, weights[name + ".weight"].double(), weights[name + ".bias"].double())

    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        h = ln(x, p + "ln_1")
        qkv = F.linear(h, weights[p + "attn.in_proj_weight"].double(), weights[p + "attn.in_proj_bias"].double())
        q, k, v = (t.reshape(length, heads, -1).transpose(0, 1) for t in qkv.chunk(3, dim=-1))
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]) + mask, dim=-1)
        x = x + lin((att @ v).transpose(0, 1).reshape(length, width), p + "attn.out_proj")
        x = x + lin(F.gelu(lin(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return ln(x, "ln_final")[None].float()


def read_context(path: str, context_shape) -> torch.Tensor:
    """A precomputed context from a safetensors file holding one tensor of the profile's shape."""
    tensors = _load_safetensors(path)
    if len(tensors) != 1:
        raise ConvertError(f"{path} must hold exactly one tensor (the context), not {len(tensors)}")
    (value,) = tensors.values()
    value = value.float()
    if value.dim() == 2:
        value = value[None]
    if list(value.shape) != list(context_shape):
        raise ConvertError(f"{path}: context of shape {list(value.shape)}, the model needs {list(context_shape)}")
    return value


# -- the whole conversion --------------------------------------------------------------------------

def lambda_from_name(path: str) -> tuple[float | None, int | None]:
    """(λ, fine-tuned steps) from a file named like ``rdeic_2_step2.ckpt``; (None, None) otherwise."""
    m = re.fullmatch(r"rdeic_(\d+(?:\.\d+)?)_step(\d+)\.\w+", os.path.basename(path))
    return (float(m.group(1)), int(m.group(2))) if m else (None, None)


@dataclass
class ConvertResult:
    model_id: str
    lam: float
    tensors: int
    ignored: list
    overridden: int


def convert(rdeic_path: str, output: str, sd_path: str | None = None, lam: float | None = None,
            context_path: str | None = None, profile: str = "paper", name: str | None = None,
            force: bool = False, dtype: str = "float32") -> ConvertResult:
    """Convert the authors' checkpoints into a model directory at ``output``.

    Args:
        rdeic_path: the RDEIC checkpoint (``rdeic_<λ>_step<k>.ckpt``).
        output: the model directory to write.
        sd_path: SD 2.1-base: an LDM checkpoint (``.ckpt``/``.safetensors``) or a diffusers folder.
        lam: the λ the model was trained for (default: from the RDEIC file's name).
        context_path: a safetensors file with the precomputed empty-prompt context (instead of
            computing it from the SD text tower).
        profile: the profile whose sizes the checkpoints have (``paper``; ``tiny`` in tests).
        name: model name for config.json (default: ``rdeic-<profile>-l<λ>[-s<k>]``).

    The model id depends only on the weights, the profile, λ, the fine-tuned step count and the name, not
    on file names or on the form of the SD weights (.ckpt or diffusers folder): converting the same
    checkpoints anywhere gives the same id, so .rdc files made with it can be exchanged.
        force: replace ``output`` if it exists.
        dtype: storage of the weights: ``float32`` (the authors' values exactly) or ``float16`` (half
            the disk; large tensors rounded, which changes rates and pixels slightly). The empty-prompt
            context is stored in float32 either way.
    """
    parsed_lam, steps = lambda_from_name(rdeic_path)
    lam = parsed_lam if lam is None else lam
    if lam is None:
        raise ConvertError(f"cannot read λ from the file name {os.path.basename(rdeic_path)!r} "
                           "(expected rdeic_<lambda>_step<k>.ckpt); pass --lambda")
    if not (lam > 0 and math.isfinite(lam)):
        raise ConvertError(f"--lambda must be a positive number, got {lam}")
    if os.path.exists(output) and not force:
        raise ConvertError(f"{output} exists (use --force to replace it)")
    if dtype not in ("float32", "float16"):
        raise ConvertError(f"--dtype must be float32 or float16, not {dtype!r}")

    config = get_profile(profile)
    config["compression"]["lambdas"] = None  # the authors' models have no λ gains: one model per λ
    # Their scales were trained through compressai's lower bound, and are coded as compressai does.
    config["entropy"]["scale_rule"] = "lower_bound_ceil"
    base, state, overridden = None, {}, 0
    if sd_path is not None and os.path.isdir(sd_path):
        folder = read_diffusers_folder(sd_path)
        base = Mapped()
        for comp in ("unet", "vae"):
            for k, v in folder[comp].items():
                _put(base, comp, k, f"{sd_path}/{comp}/{k}", v)
        if folder["text"] is not None and context_path is None:
            base.text, base.text_layers = folder["text"]
    elif sd_path is not None:
        state = read_checkpoint(sd_path)
    rdeic = read_checkpoint(rdeic_path)
    overridden = sum(k in state for k in rdeic)
    state.update(rdeic)
    mapped = map_checkpoint(state, config, use_text=context_path is None, base=base)
    weights = check_complete(mapped, config, context_given=context_path is not None)

    if context_path is not None:
        context = read_context(context_path, config["context_shape"])
    else:
        context = text_embedding(mapped.text, mapped.text_layers, config["context_shape"])
    weights["unet"]["context"] = context

    with torch.device("meta"):
        model = RDEICModel(config)
    for comp in COMPONENTS:
        state_c = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in weights[comp].items()}
        model.component(comp).load_state_dict(state_c, strict=True, assign=True)

    extra = {"lambda": float(lam)}
    if steps is not None:
        extra["fine_tuned_steps"] = steps
    name = name or f"rdeic-{profile}-l{lam:g}" + (f"-s{steps}" if steps is not None else "")
    tmp = f"{os.path.normpath(output)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model_id = save_model(model, tmp, name=name, extra=extra, dtype=dtype)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    count = sum(len(v) for v in weights.values())
    return ConvertResult(model_id, float(lam), count, mapped.ignored, overridden)
