"""The U-Net's building blocks, with diffusers' UNet2DModel parameter names and fastddpm's fused ops.

Every GroupNorm goes through ``ops.group_norm`` (fused with the SiLU, the time-embedding add or the
scale/shift that follows it) and every attention through ``ops.attention``. The nn.GroupNorm / nn.Linear
modules below are only parameter holders: they give the parameters diffusers' names (so a diffusers state
dict loads strictly) and are never called.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastddpm import ops
from fastddpm.models import batch_invariant
from fastddpm.models.conv import Conv2d
from fastddpm.ops import cpu_emulation


def concat_parameters(
    owner: nn.Module, key: str, tensors: list[torch.Tensor], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """torch.cat(tensors) along dim 0 (cast to ``dtype`` when given), cached on ``owner`` until one of the
    tensors changes.

    The diffusers-named parameters stay the source of truth; the fused copy (QKV weights, all time-embedding
    projections) is rebuilt when a parameter's data is replaced (new data pointer) or written in place
    (``load_state_dict``, an optimiser step: the tensor's version counter moves). The cache holds the source
    tensors it was built from, so their memory cannot be reused by a new tensor at the same address
    (UNet2D._apply drops the caches, so ``.to()`` does not keep old copies alive). While autograd needs the
    gradient of the parameters, or under torch.compile (which fuses the cat itself), the cat is done every call.
    """
    if dtype is not None:
        key = f"{key}:{dtype}"
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return torch.cat(tensors).to(dtype)
    return batch_invariant.cached_tensor(owner, key, tensors, lambda: torch.cat(tensors).to(dtype))


def silu_projections(
    owner: nn.Module, key: str, emb: torch.Tensor, layers: list[nn.Linear], batch: int, invariant: bool
) -> torch.Tensor:
    """Linear(SiLU(emb)) of every layer in one matmul, (batch, sum of their out_features): the time-embedding
    projections of all ResNet blocks. ``invariant``: batch_invariant.linear, emb's rows (one, for a shared
    timestep) broadcast to the batch."""
    weights, biases = [layer.weight for layer in layers], [layer.bias for layer in layers]
    if invariant:
        projected = batch_invariant.linear(owner, key, emb, weights, biases, input_silu=True)
        return projected.expand(batch, -1).contiguous() if projected.shape[0] != batch else projected
    weight = concat_parameters(owner, f"{key}_weight", weights)
    bias = concat_parameters(owner, f"{key}_bias", biases)
    return F.linear(F.silu(emb), weight, bias)


def drop_fused_caches(module: nn.Module) -> None:
    for child in module.modules():
        child.__dict__.pop("_fused_cache", None)


class ResnetBlock2D(nn.Module):
    """diffusers' ResnetBlock2D (pre-norm, SiLU, conv shortcut when channels change).

    The time-embedding projection ``time_emb_proj`` lives here by name, but UNet2D evaluates all the blocks'
    projections in one matmul and hands each block its slice (``temb``: (B, C) or (B, 2C) for scale_shift).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int,
        eps: float,
        time_embedding_norm: str,
        output_scale_factor: float,
        dropout: float,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        projected = 2 * out_channels if time_embedding_norm == "scale_shift" else out_channels
        self.time_emb_proj = nn.Linear(temb_channels, projected)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )
        self.scale_shift = time_embedding_norm == "scale_shift"
        self.out_channels = out_channels
        self.output_scale_factor = output_scale_factor
        self.dropout = dropout

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        n1, n2 = self.norm1, self.norm2
        h = ops.group_norm(x, n1.num_groups, n1.weight, n1.bias, n1.eps, silu=True)
        h = self.conv1(h)
        if self.scale_shift:
            scale, shift = temb[:, : self.out_channels], temb[:, self.out_channels :]
            h = ops.group_norm(
                h, n2.num_groups, n2.weight, n2.bias, n2.eps, scale=scale, shift=shift, silu=True
            )
        else:
            h = ops.group_norm(h, n2.num_groups, n2.weight, n2.bias, n2.eps, add=temb, silu=True)
        if self.dropout and self.training:
            h = F.dropout(h, self.dropout, training=True)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = self.conv2(h, residual=shortcut)  # conv2(h) + shortcut, the add fused where the conv can
        if self.output_scale_factor != 1:
            out = out / self.output_scale_factor
        return out


class AttentionBlock(nn.Module):
    """diffusers' spatial self-attention (``Attention`` with ``_from_deprecated_attn_block``).

    y = (to_out(attention(to_q(n), to_k(n), to_v(n))) + x) / rescale_output_factor with n = GroupNorm(x)
    (no norm when ``norm_groups`` is None, as in a scale_shift mid block). Q, K and V come from one matmul on
    the concatenated weights; the output projection takes the residual as the matmul's input (addmm /
    baddbmm), so the residual add costs no extra pass. Works on NCHW and channels_last inputs alike.
    """

    def __init__(self, channels: int, head_dim: int, norm_groups: int | None, eps: float, rescale: float):
        super().__init__()
        self.group_norm = nn.GroupNorm(norm_groups, channels, eps=eps) if norm_groups is not None else None
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])
        self.heads = channels // head_dim
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.rescale = rescale
        self.inverse_rescale = 1.0 / rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels := batch_invariant.kernels(x):
            return self._attend_rows(x, kernels)
        if cpu_emulation.computes_in_float32(x):
            return self._attend(x.float(), torch.float32).to(x.dtype)
        return self._attend(x, None)

    def _parameter(self, key: str, tensors: list[torch.Tensor], dtype: torch.dtype | None) -> torch.Tensor:
        """One parameter, or several concatenated; a cached copy in ``dtype`` when one is given."""
        if dtype is None and len(tensors) == 1:
            return tensors[0]
        return concat_parameters(self, key, tensors, dtype)

    def _attend(self, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        """The block on x with its parameters in ``dtype`` (None: as they are)."""
        batch, channels, height, width = x.shape
        length = height * width
        h = x
        if self.group_norm is not None:
            norm = self.group_norm
            norm_weight = self._parameter("norm_weight", [norm.weight], dtype)
            norm_bias = self._parameter("norm_bias", [norm.bias], dtype)
            h = ops.group_norm(x, norm.num_groups, norm_weight, norm_bias, norm.eps)
        tokens = h.reshape(batch, channels, length).transpose(1, 2)  # (B, L, C): a view for channels_last
        weight = self._parameter("qkv_weight", [self.to_q.weight, self.to_k.weight, self.to_v.weight], dtype)
        bias = self._parameter("qkv_bias", [self.to_q.bias, self.to_k.bias, self.to_v.bias], dtype)
        qkv = F.linear(tokens, weight, bias).view(batch, length, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, D)
        o = ops.attention(q, k, v, self.scale).transpose(1, 2).reshape(batch, length, channels)

        out_proj = self.to_out[0]
        out_weight = self._parameter("out_weight", [out_proj.weight], dtype)
        out_bias = self._parameter("out_bias", [out_proj.bias], dtype)
        alpha = beta = self.inverse_rescale
        if x.is_contiguous(memory_format=torch.channels_last):
            # Token-major: the residual viewed as (B*L, C) is the addmm input, the result is channels_last.
            residual = x.permute(0, 2, 3, 1).reshape(batch * length, channels)
            out = torch.addmm(
                residual, o.reshape(batch * length, channels), out_weight.t(), beta=beta, alpha=alpha
            )
            out = out.view(batch, height, width, channels).permute(0, 3, 1, 2)
            return out + out_bias.view(1, channels, 1, 1) * alpha
        # Channel-major: (B, C, L) = W_out @ o^T + residual, in x's NCHW layout with no transposing copy.
        weight_out = out_weight.unsqueeze(0).expand(batch, channels, channels)
        out = torch.baddbmm(
            x.reshape(batch, channels, length), weight_out, o.transpose(1, 2), beta=beta, alpha=alpha
        )
        return (out + out_bias.view(1, channels, 1) * alpha).view(batch, channels, height, width)

    def _attend_rows(self, x: torch.Tensor, kernels: str) -> torch.Tensor:
        """The block with batch-invariant projections (fastddpm.models.batch_invariant), in float32, in
        diffusers' order: (to_out(o) + x) / rescale_output_factor."""
        # fastddpm._C's products take 16-bit x but compute in float32, and so do these blocks there; the
        # Triton kernels multiply 16-bit tiles natively, so the block stays in x's dtype.
        wide = kernels == "cpu" and x.dtype != torch.float32
        dtype = torch.float32 if wide else None
        x32 = x.float() if wide else x
        batch, channels, height, width = x.shape
        length = height * width
        h = x32
        if self.group_norm is not None:
            norm = self.group_norm
            norm_weight = self._parameter("norm_weight", [norm.weight], dtype)
            norm_bias = self._parameter("norm_bias", [norm.bias], dtype)
            h = ops.group_norm(x32, norm.num_groups, norm_weight, norm_bias, norm.eps)
        tokens = h.permute(0, 2, 3, 1).reshape(batch, length, channels)  # a view for channels_last
        projections = (self.to_q, self.to_k, self.to_v)
        qkv = batch_invariant.linear(
            self, "qkv", tokens, [p.weight for p in projections], [p.bias for p in projections]
        ).view(batch, length, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, D)
        o = batch_invariant.attention(q, k, v, self.scale, kernels)
        o = o.transpose(1, 2).reshape(batch, length, channels)
        residual = x32.permute(0, 2, 3, 1).reshape(batch, length, channels)
        out_proj = self.to_out[0]
        out = batch_invariant.linear(
            self, "out", o, [out_proj.weight], [out_proj.bias], residual=residual, divisor=self.rescale
        )
        return out.view(batch, height, width, channels).permute(0, 3, 1, 2).to(x.dtype)


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv; padding 0 means diffusers' asymmetric (0, 1, 0, 1) zero pad first."""

    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)
        self.pad_right_bottom = padding == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_right_bottom:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _attentions(count: int, channels: int, head_dim: int | None, groups: int, eps: float) -> nn.ModuleList:
    head_dim = channels if head_dim is None else head_dim
    return nn.ModuleList(AttentionBlock(channels, head_dim, groups, eps, 1.0) for _ in range(count))


class DownBlock(nn.Module):
    """DownBlock2D / AttnDownBlock2D: resnets (each followed by attention if ``attention``), then a downsample.

    ``forward`` returns (h, skips): the skip tensors the up path concatenates, in diffusers' order.
    """

    def __init__(
        self, in_channels, out_channels, resnet_args, *, layers, attention, head_dim, downsample, padding
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, **resnet_args)
            for i in range(layers)
        )
        if attention:
            self.attentions = _attentions(
                layers, out_channels, head_dim, resnet_args["groups"], resnet_args["eps"]
            )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding)]) if downsample else None

    def forward(self, h: torch.Tensor, tembs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, tembs.pop())
            if attentions is not None:
                h = attentions[i](h)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class UpBlock(nn.Module):
    """UpBlock2D / AttnUpBlock2D: for each resnet, concatenate the last skip, resnet, attention; then upsample."""

    def __init__(
        self, in_channels, prev_channels, out_channels, resnet_args, *, layers, attention, head_dim, upsample
    ):
        super().__init__()
        resnets = []
        for i in range(layers):
            skip_channels = in_channels if i == layers - 1 else out_channels
            resnet_in = prev_channels if i == 0 else out_channels
            resnets.append(ResnetBlock2D(resnet_in + skip_channels, out_channels, **resnet_args))
        self.resnets = nn.ModuleList(resnets)
        if attention:
            self.attentions = _attentions(
                layers, out_channels, head_dim, resnet_args["groups"], resnet_args["eps"]
            )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if upsample else None

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor], tembs: list[torch.Tensor]) -> torch.Tensor:
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), tembs.pop())
            if attentions is not None:
                h = attentions[i](h)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h)
        return h


class MidBlock(nn.Module):
    """UNetMidBlock2D with one layer: resnet, attention (unless add_attention is False), resnet."""

    def __init__(self, channels, resnet_args, *, head_dim, attention_groups, add_attention):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(channels, channels, **resnet_args) for _ in range(2))
        head_dim = channels if head_dim is None else head_dim
        rescale = resnet_args["output_scale_factor"]
        self.attentions = nn.ModuleList(
            [AttentionBlock(channels, head_dim, attention_groups, resnet_args["eps"], rescale)]
            if add_attention
            else []
        )

    def forward(self, h: torch.Tensor, tembs: list[torch.Tensor]) -> torch.Tensor:
        h = self.resnets[0](h, tembs.pop())
        for attention in self.attentions:
            h = attention(h)
        return self.resnets[1](h, tembs.pop())
