"""An independent pure-torch model of OpenAI's ADM (improved-diffusion / guided-diffusion): the U-Net and the
sampling of their GaussianDiffusion, for testing fastddpm's ADM reader, U-Net and schedule.

Written from the published architecture (Nichol & Dhariwal 2021, Dhariwal & Nichol 2021) in plain torch, not
from fastddpm code. Module names follow theirs (input_blocks / middle_block / output_blocks, in_layers /
emb_layers / out_layers / skip_connection, norm / qkv / proj_out, time_embed, label_emb, out), so its
state_dict keys and shapes are the keys and shapes of their checkpoints. The diffusion keeps their float64
numpy coefficient tables, gathered then cast to float32, and their operation order.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------- the U-Net


class GroupNorm32(nn.GroupNorm):
    """32 groups, eps 1e-5, computed in float32 whatever the input dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """[cos, sin] of t * exp(-log(max_period) * i / half); zero-padded when dim is odd."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs[None].to(timesteps.device)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1) if dim % 2 else embedding


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, dropout, out_channels, scale_shift, up=False, down=False):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if scale_shift else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )
        self.scale_shift = scale_shift

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the spatial positions; qkv and proj_out are 1-d 1x1 convs.

    ``legacy`` order: the 3C qkv channels are grouped per head (q, k, v of head 0, then head 1, ...);
    the new order: all heads' q, then all k, then all v. Both scale q and k by ch ** -0.25 each."""

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, new_order: bool):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.new_order = new_order

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length, heads = qkv.shape[2], self.num_heads
        ch = c // heads
        if self.new_order:
            q, k, v = (t.reshape(b * heads, ch, length) for t in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNetModel(nn.Module):
    """ADM's U-Net. ``attention_resolutions``: the downsampling rates (1, 2, 4, ...) that attend."""

    def __init__(
        self,
        in_channels,
        model_channels,
        out_channels,
        num_res_blocks,
        attention_resolutions,
        dropout=0.0,
        channel_mult=(1, 2, 4, 8),
        num_classes=None,
        num_heads=1,
        num_head_channels=-1,
        num_heads_upsample=-1,
        use_scale_shift_norm=False,
        resblock_updown=False,
        use_new_attention_order=False,
        conv_resample=True,
    ):
        super().__init__()
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.model_channels = model_channels
        self.num_classes = num_classes
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        def res(cin, cout, **updown):
            return ResBlock(cin, emb_dim, dropout, cout, use_scale_shift_norm, **updown)

        def attn(c, heads):
            return AttentionBlock(c, heads, num_head_channels, use_new_attention_order)

        ch = input_ch = int(channel_mult[0] * model_channels)  # 128 for the 512 px model's 0.5
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attn(ch, heads_up))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(input_ch, out_channels, 3, padding=1))

    def forward(self, x, timesteps, y=None):
        assert (y is not None) == (self.num_classes is not None)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class SuperResModel(UNetModel):
    """Their upsampler: the U-Net over the noisy sample and the low-resolution image, upsampled bilinearly
    (F.interpolate's default align_corners=False) to the sample's size and concatenated after it."""

    def __init__(self, **kwargs):
        super().__init__(in_channels=6, **kwargs)

    def forward(self, x, timesteps, low_res=None, y=None):
        upsampled = F.interpolate(low_res, x.shape[2:], mode="bilinear")
        return super().forward(torch.cat([x, upsampled], dim=1), timesteps, y)


# their sr_create_model's channel_mult for each large_size it builds
SUPER_RES_CHANNEL_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


def super_res_model_from_flags(flags: dict) -> SuperResModel:
    """Their sr_create_model: large_size sets channel_mult and the attention rates; the old attention order."""
    size = flags["large_size"]
    return SuperResModel(**_unet_arguments({**flags, "image_size": size, "use_new_attention_order": False},
                                           SUPER_RES_CHANNEL_MULT[size]))  # fmt: skip


def model_from_flags(flags: dict, channel_mult) -> UNetModel:
    """Their create_model: image-size resolutions -> downsampling rates, 3 or 6 output channels."""
    return UNetModel(in_channels=3, **_unet_arguments(flags, channel_mult))


def _unet_arguments(flags: dict, channel_mult) -> dict:
    size = flags["image_size"]
    return dict(
        model_channels=flags["num_channels"],
        out_channels=6 if flags["learn_sigma"] else 3,
        num_res_blocks=flags["num_res_blocks"],
        attention_resolutions=tuple(size // int(r) for r in str(flags["attention_resolutions"]).split(",")),
        dropout=flags["dropout"],
        channel_mult=channel_mult,
        num_classes=1000 if flags["class_cond"] else None,
        num_heads=flags["num_heads"],
        num_head_channels=flags["num_head_channels"],
        num_heads_upsample=flags["num_heads_upsample"],
        use_scale_shift_norm=flags["use_scale_shift_norm"],
        resblock_updown=flags["resblock_updown"],
        use_new_attention_order=flags["use_new_attention_order"],
    )


# ------------------------------------------------------------------------------------------- the diffusion


def named_beta_schedule(name: str, steps: int) -> np.ndarray:
    if name == "linear":  # Ho et al.'s 1e-4..0.02 at T=1000, scaled to keep the same endpoints for any T
        scale = 1000 / steps
        return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    if name == "cosine":
        alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return np.array(
            [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
            dtype=np.float64,
        )
    raise ValueError(name)


def space_timesteps(num_timesteps: int, section_counts) -> set[int]:
    """Their respacing: "ddimN" (a fixed integer stride with exactly N steps) or per-section counts."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            want = int(section_counts[4:])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == want:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {want} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return set(steps)


class SpacedDiffusion:
    """GaussianDiffusion over the kept timesteps of a base schedule (all of them without respacing)."""

    def __init__(self, flags: dict):
        steps = flags["diffusion_steps"]
        base = named_beta_schedule(flags["noise_schedule"], steps)
        respacing = flags["timestep_respacing"] or [steps]
        keep = space_timesteps(steps, respacing)
        last, betas, self.timestep_map = 1.0, [], []
        for i, abar in enumerate(np.cumprod(1.0 - base)):
            if i in keep:
                betas.append(1 - abar / last)
                last = abar
                self.timestep_map.append(i)
        self.original_num_steps = steps
        self.betas = betas = np.array(betas, dtype=np.float64)
        self.num_timesteps = len(betas)
        self.learn_sigma, self.sigma_small = flags["learn_sigma"], flags["sigma_small"]
        self.predict_xstart, self.rescale_timesteps = flags["predict_xstart"], flags["rescale_timesteps"]
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        self.alphas_cumprod, self.alphas_cumprod_prev = abar, abar_prev
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / abar)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / abar - 1)
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)

    @staticmethod
    def _extract(arr: np.ndarray, t: torch.Tensor, shape) -> torch.Tensor:
        res = torch.from_numpy(arr).to(t.device)[t].float()
        return res.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)

    def _model(self, model, x, t, model_kwargs):
        mapped = torch.tensor(self.timestep_map, dtype=t.dtype)[t]
        if self.rescale_timesteps:
            mapped = mapped.float() * (1000.0 / self.original_num_steps)
        return model(x, mapped, **model_kwargs)

    def p_mean_variance(self, model, x, t, clip_denoised=True, model_kwargs=None):
        out = self._model(model, x, t, model_kwargs or {})
        channels = x.shape[1]
        if self.learn_sigma:
            out, var_values = torch.split(out, channels, dim=1)
            min_log = self._extract(self.posterior_log_variance_clipped, t, x.shape)
            max_log = self._extract(np.log(self.betas), t, x.shape)
            frac = (var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        else:
            if self.sigma_small:
                table = self.posterior_log_variance_clipped
            else:  # fixed large: the first step takes the posterior variance (beta_0 is too small)
                table = np.log(np.append(self.posterior_variance[1], self.betas[1:]))
            log_variance = self._extract(table, t, x.shape)
        if self.predict_xstart:
            x0 = out
        else:
            x0 = (
                self._extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x
                - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x.shape) * out
            )
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean = (
            self._extract(self.posterior_mean_coef1, t, x.shape) * x0
            + self._extract(self.posterior_mean_coef2, t, x.shape) * x
        )
        return mean, log_variance, x0

    def p_sample_loop(self, model, shape, noise=None, generator=None, model_kwargs=None):
        """Ancestral sampling; x_T is ``noise`` or the generator's first draw, then one draw per step."""
        img = noise if noise is not None else torch.randn(*shape, generator=generator)
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((shape[0],), i, dtype=torch.long)
            mean, log_variance, _ = self.p_mean_variance(model, img, t, model_kwargs=model_kwargs)
            z = torch.randn(*shape, generator=generator)
            nonzero = (t != 0).float().view(-1, 1, 1, 1)
            img = mean + nonzero * torch.exp(0.5 * log_variance) * z
        return img

    def ddim_sample_loop(self, model, shape, noise=None, generator=None, model_kwargs=None, eta=0.0):
        """DDIM over the same process; eps is re-derived from the clipped x0; one draw per step."""
        img = noise if noise is not None else torch.randn(*shape, generator=generator)
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((shape[0],), i, dtype=torch.long)
            _, _, x0 = self.p_mean_variance(model, img, t, model_kwargs=model_kwargs)
            eps = (self._extract(self.sqrt_recip_alphas_cumprod, t, img.shape) * img - x0) / self._extract(
                self.sqrt_recipm1_alphas_cumprod, t, img.shape
            )
            abar = self._extract(self.alphas_cumprod, t, img.shape)
            abar_prev = self._extract(self.alphas_cumprod_prev, t, img.shape)
            sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
            z = torch.randn(*shape, generator=generator)
            mean = x0 * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
            nonzero = (t != 0).float().view(-1, 1, 1, 1)
            img = mean + nonzero * sigma * z
        return img
