"""The flags of OpenAI's ADM scripts (improved-diffusion, guided-diffusion): defaults, types, parsing.

Their READMEs describe each checkpoint by MODEL_FLAGS and DIFFUSION_FLAGS strings such as
``--image_size 256 --num_channels 256 --learn_sigma True``. ``parse_flag_string`` turns such a string into
keyword flags; ``resolve_flags`` fills in guided-diffusion's script_util defaults and checks each value.
Training-only flags their scripts also accept (use_checkpoint, lr, batch_size, ...) are accepted and ignored,
so a README's flag strings can be pasted whole.
"""

from __future__ import annotations

import shlex
from typing import Any

# guided-diffusion's model_and_diffusion_defaults(), plus sigma_small (create_gaussian_diffusion's default).
# improved-diffusion differs only in rescale_timesteps=True and rescale_learned_sigmas=True.
FLAG_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "learn_sigma": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": False,
    "rescale_learned_sigmas": False,
    "sigma_small": False,
}
# Flags of their training / sampling scripts that do not change the network or the sampling maths.
IGNORED_FLAGS = frozenset(
    "lr batch_size num_samples use_ddim clip_denoised model_path schedule_sampler weight_decay "
    "lr_anneal_steps microbatch ema_rate log_interval save_interval resume_checkpoint fp16_scale_growth "
    "iterations anneal_lr data_dir".split()
)
NOISE_SCHEDULES = ("linear", "cosine")
# The upsamplers (their SuperResModel) take sr_model_and_diffusion_defaults(): these two sizes on top of the
# flags above, less image_size, channel_mult and use_new_attention_order, which their sr_create_model does not
# take (it derives the first two from large_size and uses the old attention order).
SUPER_RES_DEFAULTS: dict[str, int] = {"large_size": 256, "small_size": 64}
NOT_SUPER_RES_FLAGS = ("image_size", "channel_mult", "use_new_attention_order")
# sr_create_model's channel_mult by large_size (guided-diffusion; improved-diffusion knows 256 and 64 alike)
SUPER_RES_CHANNEL_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}
# Their create_model's channel_mult for an empty flag (32: improved-diffusion's CIFAR-10 model).
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}
_TRUE, _FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")


class FlagError(ValueError):
    """A flag is unknown, malformed, or contradicts the weights: the message names the flag."""


def parse_flag_string(text: str) -> dict[str, str]:
    """``"--num_channels 256 --learn_sigma True"`` -> {"num_channels": "256", "learn_sigma": "True"}."""
    words = shlex.split(text)
    flags: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or len(word) < 3:
            raise FlagError(f"flag string: expected --name, found {word!r}")
        name, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 >= len(words) or words[i + 1].startswith("--"):
                raise FlagError(f"flag --{name} has no value")
            value = words[i + 1]
            i += 1
        flags[name] = value
        i += 1
    return flags


def _convert(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise FlagError(f"flag {name}={value!r} is not a boolean (True/False)")
    if isinstance(default, int):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise FlagError(f"flag {name}={value!r} is not an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise FlagError(f"flag {name}={value!r} is not an integer") from None
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise FlagError(f"flag {name}={value!r} is not a number") from None
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def resolve_flags(given: dict[str, Any]) -> dict[str, Any]:
    """All flags, typed and checked: the given ones over guided-diffusion's defaults."""
    unknown = sorted(k for k in given if k not in FLAG_DEFAULTS and k not in IGNORED_FLAGS)
    if unknown:
        raise FlagError(f"flag {unknown[0]!r} is not an ADM model or diffusion flag")
    flags = {k: _convert(k, given.get(k, d), d) for k, d in FLAG_DEFAULTS.items()}
    for name in ("image_size", "num_channels", "num_res_blocks", "num_heads", "diffusion_steps"):
        if flags[name] < 1:
            raise FlagError(f"flag {name}={flags[name]} must be >= 1")
    if flags["num_head_channels"] == 0 or flags["num_head_channels"] < -1:
        raise FlagError(f"flag num_head_channels={flags['num_head_channels']} must be -1 or >= 1")
    if flags["num_heads_upsample"] == 0 or flags["num_heads_upsample"] < -1:
        raise FlagError(f"flag num_heads_upsample={flags['num_heads_upsample']} must be -1 or >= 1")
    if flags["noise_schedule"] not in NOISE_SCHEDULES:
        raise FlagError(f"flag noise_schedule={flags['noise_schedule']!r} is not one of linear, cosine")
    flags["channel_mult"] = channel_mult(flags)
    flags["attention_ds"] = attention_rates(flags)
    return flags


def resolve_super_res_flags(given: dict[str, Any]) -> dict[str, Any]:
    """An upsampler's flags, typed and checked: large_size is the image size (the sample's), channel_mult is
    their sr_create_model's for it, and small_size (the low-resolution input's side) is kept beside them."""
    sizes = {k: _convert(k, given.get(k, d), d) for k, d in SUPER_RES_DEFAULTS.items()}
    large, small = sizes["large_size"], sizes["small_size"]
    if large not in SUPER_RES_CHANNEL_MULT:
        known = ", ".join(map(str, SUPER_RES_CHANNEL_MULT))
        raise FlagError(f"flag large_size={large} is not a size their upsamplers are built for ({known})")
    if not 1 <= small <= large:
        raise FlagError(f"flag small_size={small} must be between 1 and large_size={large}")
    for name in NOT_SUPER_RES_FLAGS:
        same = name == "image_size" and str(given.get(name)) == str(large)
        if name in given and not same:
            raise FlagError(
                f"flag {name} does not apply to an upsampler (their SuperResModel): large_size sets its size"
            )
    base = {k: v for k, v in given.items() if k not in SUPER_RES_DEFAULTS and k not in NOT_SUPER_RES_FLAGS}
    base["image_size"] = large
    base["channel_mult"] = ",".join(map(str, SUPER_RES_CHANNEL_MULT[large]))
    return {**resolve_flags(base), **sizes, "super_res": True}


def channel_mult(flags: dict[str, Any]) -> tuple[float, ...]:
    text = flags["channel_mult"]
    if isinstance(text, tuple):
        return text
    if not text:
        if flags["image_size"] not in DEFAULT_CHANNEL_MULT:
            raise FlagError(
                f"flag image_size={flags['image_size']} has no default channel_mult "
                f"(their scripts know {', '.join(map(str, DEFAULT_CHANNEL_MULT))}); pass channel_mult"
            )
        return DEFAULT_CHANNEL_MULT[flags["image_size"]]
    try:
        mult = tuple(int(m) for m in text.split(","))
    except ValueError:
        raise FlagError(f"flag channel_mult={text!r} is not a comma-separated list of integers") from None
    if not mult or min(mult) < 1:
        raise FlagError(f"flag channel_mult={text!r} must list positive integers")
    return mult


def attention_rates(flags: dict[str, Any]) -> tuple[int, ...]:
    """attention_resolutions (pixels) -> the downsampling rates that attend, as their create_model does."""
    text = flags["attention_resolutions"]
    try:
        resolutions = [int(r) for r in str(text).split(",") if r.strip()]
    except ValueError:
        raise FlagError(
            f"flag attention_resolutions={text!r} is not a comma-separated list of integers"
        ) from None
    if any(r < 1 for r in resolutions):
        raise FlagError(f"flag attention_resolutions={text!r} must list positive integers")
    return tuple(flags["image_size"] // r for r in resolutions)
