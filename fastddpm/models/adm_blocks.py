"""The blocks of OpenAI's ADM U-Net (improved-diffusion / guided-diffusion) on fastddpm's fused ops.

Parameter names are theirs (in_layers.0 / in_layers.2 / emb_layers.1 / out_layers.0 / out_layers.3 /
skip_connection; norm / qkv / proj_out; op and conv of the resamplers), so their state dicts load strictly.
The nn.GroupNorm / nn.Linear / nn.Conv1d modules hold parameters only and are never called: every GroupNorm32
(float32 statistics, 32 groups, eps 1e-5) is one ``ops.group_norm`` call fused with the SiLU, the
time-embedding add or the scale-shift that follows it, and every attention is one ``ops.attention`` call.
Parameterless slots of their nn.Sequential containers (SiLU, Dropout) are nn.Identity placeholders that
keep the indices of the names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastddpm import ops
from fastddpm.models import batch_invariant
from fastddpm.models.conv import Conv2d
from fastddpm.models.unet_blocks import concat_parameters
from fastddpm.ops import cpu_emulation

GROUPS = 32  # their normalization(): GroupNorm32(32, channels), torch's default eps
EPS = 1e-5


def _norm(channels: int) -> nn.GroupNorm:
    if channels % GROUPS:
        raise ValueError(f"ADM's GroupNorm32 needs channels divisible by 32, got {channels}")
    return nn.GroupNorm(GROUPS, channels, eps=EPS)


def group_norm(norm: nn.GroupNorm, x: torch.Tensor, **fused) -> torch.Tensor:
    return ops.group_norm(x, GROUPS, norm.weight, norm.bias, EPS, **fused)


class Downsample(nn.Module):
    """A stride-2 3x3 conv (padding 1) named ``op``, or a 2x2 average pool (no parameters)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = Conv2d(channels, channels, kernel_size=3, stride=2, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x) if self.op is not None else F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv named ``conv`` when there is one."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = Conv2d(channels, channels, kernel_size=3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """GroupNorm-SiLU-(resample)-conv, then + emb (or * (1 + scale) + shift inside the second norm),
    SiLU, dropout, conv, plus the (resampled, projected) input.

    ``emb_layers.1`` is evaluated by AdmUNet for all blocks in one matmul; ``forward`` gets its slice.
    """

    def __init__(self, channels, emb_channels, out_channels, scale_shift, dropout, resample=None):
        super().__init__()
        self.in_layers = nn.ModuleList(
            [_norm(channels), nn.Identity(), Conv2d(channels, out_channels, kernel_size=3, padding=1)]
        )
        projected = 2 * out_channels if scale_shift else out_channels
        self.emb_layers = nn.ModuleList([nn.Identity(), nn.Linear(emb_channels, projected)])
        self.out_layers = nn.ModuleList(
            [
                _norm(out_channels),
                nn.Identity(),
                nn.Identity(),
                Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            ]
        )
        # Their skip is Identity when the channels match, else a 1x1 conv (use_conv is never set).
        self.skip_connection = (
            Conv2d(channels, out_channels, kernel_size=1) if out_channels != channels else None
        )
        # up/down: the parameterless resamplers of both paths (their h_upd / x_upd)
        self.resample = {"up": Upsample(channels, False), "down": Downsample(channels, False)}.get(resample)
        self.scale_shift = scale_shift
        self.out_channels = out_channels
        self.dropout = dropout

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = group_norm(self.in_layers[0], x, silu=True)
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.in_layers[2](h)
        norm = self.out_layers[0]
        if self.scale_shift:
            scale, shift = emb[:, : self.out_channels], emb[:, self.out_channels :]
            h = group_norm(norm, h, scale=scale, shift=shift, silu=True)
        else:
            h = group_norm(norm, h, add=emb, silu=True)
        if self.dropout and self.training:
            h = F.dropout(h, self.dropout, training=True)
        skip = x if self.skip_connection is None else self.skip_connection(x)
        return self.out_layers[3](h, residual=skip)  # conv(h) + skip, the add fused where the conv can


class AttentionBlock(nn.Module):
    """x + proj_out(attention(qkv(GroupNorm(x)))) over the H*W positions.

    ``heads`` is their num_heads, or channels // num_head_channels. The 3C qkv channels are ordered per head
    (q, k, v of head 0, then of head 1, ...: QKVAttentionLegacy) or, with ``new_order``, all q, all k, all v
    (QKVAttention); each head has C / heads channels, scaled by head_dim ** -0.5 as theirs (by -0.25 on
    each of q and k). qkv and proj_out are 1x1 Conv1d weights (3C, C, 1) / (C, C, 1), used as matrices.
    """

    def __init__(self, channels: int, heads: int, new_order: bool):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention over {channels} channels cannot split into {heads} heads")
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.heads = heads
        self.head_dim = channels // heads
        self.new_order = new_order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels := batch_invariant.kernels(x):
            return self._attend_rows(x, kernels)
        if cpu_emulation.computes_in_float32(x):
            return self._attend(x.float(), torch.float32).to(x.dtype)
        return self._attend(x, None)

    def _attend_rows(self, x: torch.Tensor, kernels: str) -> torch.Tensor:
        """The block with batch-invariant projections (fastddpm.models.batch_invariant), in float32, in
        their order: x + proj_out(attention)."""
        # fastddpm._C's products take 16-bit x but compute in float32, and so do these blocks there; the
        # Triton kernels multiply 16-bit tiles natively, so the block stays in x's dtype.
        wide = kernels == "cpu" and x.dtype != torch.float32
        dtype = torch.float32 if wide else None
        x32 = x.float() if wide else x
        batch, channels, height, width = x.shape
        length, heads, head_dim = height * width, self.heads, self.head_dim
        norm = self.norm
        h = ops.group_norm(
            x32,
            GROUPS,
            self._matrix("norm_w", norm.weight, dtype),
            self._matrix("norm_b", norm.bias, dtype),
            EPS,
        )
        tokens = h.permute(0, 2, 3, 1).reshape(batch, length, channels)  # a view for channels_last
        qkv = batch_invariant.linear(self, "qkv", tokens, [self.qkv.weight[:, :, 0]], [self.qkv.bias])
        if self.new_order:
            q, k, v = qkv.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = qkv.view(batch, length, heads, 3, head_dim).permute(3, 0, 2, 1, 4).unbind(0)
        o = batch_invariant.attention(q, k, v, head_dim**-0.5, kernels)
        o = o.transpose(1, 2).reshape(batch, length, channels)
        residual = x32.permute(0, 2, 3, 1).reshape(batch, length, channels)
        out = batch_invariant.linear(
            self, "proj", o, [self.proj_out.weight[:, :, 0]], [self.proj_out.bias], residual=residual
        )
        return out.view(batch, height, width, channels).permute(0, 3, 1, 2).to(x.dtype)

    def _matrix(self, key: str, tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        if tensor.dim() == 3:
            tensor = tensor[:, :, 0]  # (out, in, 1) conv weight -> (out, in), a view
        return tensor if dtype is None else concat_parameters(self, key, [tensor], dtype)

    def _attend(self, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        batch, channels, height, width = x.shape
        length, heads, head_dim = height * width, self.heads, self.head_dim
        norm = self.norm
        h = ops.group_norm(
            x,
            GROUPS,
            self._matrix("norm_w", norm.weight, dtype),
            self._matrix("norm_b", norm.bias, dtype),
            EPS,
        )
        tokens = h.reshape(batch, channels, length).transpose(1, 2)  # (B, L, C): a view for channels_last
        qkv = F.linear(
            tokens, self._matrix("qkv_w", self.qkv.weight, dtype), self._matrix("qkv_b", self.qkv.bias, dtype)
        )
        if self.new_order:
            q, k, v = qkv.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = qkv.view(batch, length, heads, 3, head_dim).permute(3, 0, 2, 1, 4).unbind(0)
        o = ops.attention(q, k, v, head_dim**-0.5).transpose(1, 2).reshape(batch, length, channels)
        weight = self._matrix("proj_w", self.proj_out.weight, dtype)
        bias = self._matrix("proj_b", self.proj_out.bias, dtype)
        if x.is_contiguous(memory_format=torch.channels_last):
            # Token-major: the residual viewed as (B*L, C) is the addmm input; the result is channels_last.
            residual = x.permute(0, 2, 3, 1).reshape(batch * length, channels)
            out = torch.addmm(residual, o.reshape(batch * length, channels), weight.t())
            out = out.view(batch, height, width, channels).permute(0, 3, 1, 2)
            return out + bias.view(1, channels, 1, 1)
        # Channel-major: (B, C, L) = W @ o^T + x, in x's NCHW layout with no transposing copy.
        out = torch.baddbmm(
            x.reshape(batch, channels, length), weight.expand(batch, -1, -1), o.transpose(1, 2)
        )
        return (out + bias.view(1, channels, 1)).view(batch, channels, height, width)
