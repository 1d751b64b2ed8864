"""Reduced-width flag sets with the structure of every published ADM checkpoint family.

Each entry is the README's MODEL_FLAGS + DIFFUSION_FLAGS string with the widths shrunk (num_channels,
num_head_channels) and nothing structural changed: levels (from image_size), attention rates, head rule,
scale-shift norm, resblock up/down, attention order, class conditioning, learned sigmas, schedule. The
improved-diffusion strings add rescale_timesteps True where their README relies on improved-diffusion's own
default. ``sample_size`` is the image side the tests run at (the nets are convolutional; a small side keeps
the CPU tests fast while every level, down to 1x1 for the deep ones, is exercised).
"""

from __future__ import annotations

FAMILIES: dict[str, tuple[str, int]] = {
    # improved-diffusion (Nichol & Dhariwal 2021)
    "improved_cifar10": (
        "--image_size 32 --num_channels 32 --num_res_blocks 3 --learn_sigma True --dropout 0.3 "
        "--diffusion_steps 4000 --noise_schedule cosine --rescale_timesteps True",
        16,
    ),
    "improved_imagenet64": (
        "--image_size 64 --num_channels 32 --num_res_blocks 3 --learn_sigma True --class_cond True "
        "--diffusion_steps 4000 --noise_schedule cosine --rescale_learned_sigmas False --rescale_timesteps False",
        16,
    ),
    "improved_lsun": (
        "--image_size 256 --num_channels 32 --num_res_blocks 2 --num_heads 1 --learn_sigma True "
        "--use_scale_shift_norm False --attention_resolutions 16 "
        "--diffusion_steps 1000 --noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False",
        32,
    ),
    # guided-diffusion (Dhariwal & Nichol 2021)
    "guided_64_cond": (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
        "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 32 --num_head_channels 16 "
        "--num_res_blocks 3 --resblock_updown True --use_new_attention_order True --use_fp16 True "
        "--use_scale_shift_norm True",
        16,
    ),
    "guided_128_cond": (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 "
        "--learn_sigma True --noise_schedule linear --num_channels 32 --num_heads 4 --num_res_blocks 2 "
        "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
        16,
    ),
    "guided_256_cond": (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 "
        "--learn_sigma True --noise_schedule linear --num_channels 32 --num_head_channels 16 "
        "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
        32,
    ),
    "guided_256_uncond": (
        "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 "
        "--learn_sigma True --noise_schedule linear --num_channels 32 --num_head_channels 16 "
        "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
        32,
    ),
    "guided_512_cond": (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 "
        "--learn_sigma True --noise_schedule linear --num_channels 64 --num_head_channels 16 "
        "--num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True",
        64,
    ),
    "guided_lsun_256": (
        "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 "
        "--image_size 256 --learn_sigma True --noise_schedule linear --num_channels 32 --num_head_channels 16 "
        "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
        32,
    ),
}

# Their upsamplers (SuperResModel), reduced the same way: README's flags with num_channels / num_head_channels
# shrunk. (sample side, low-resolution side) replace large_size / small_size at test time: small_size is the
# low_res input's side only, large_size (kept) sets the levels; the nets are convolutional.
SUPER_RES_FAMILIES: dict[str, tuple[str, int, int]] = {
    # guided-diffusion 64_256_upsampler.pt
    "guided_64_256_upsampler": (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256 "
        "--small_size 64 --learn_sigma True --noise_schedule linear --num_channels 32 --num_heads 4 "
        "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
        32,
        8,
    ),
    # guided-diffusion 128_512_upsampler.pt
    "guided_128_512_upsampler": (
        "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 "
        "--small_size 128 --learn_sigma True --noise_schedule linear --num_channels 32 --num_head_channels 16 "
        "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
        32,
        8,
    ),
    # improved-diffusion's SuperResModel with its script defaults (64 -> 256, unconditional)
    "improved_64_256_upsampler": (
        "--large_size 256 --small_size 64 --num_channels 32 --num_res_blocks 2 --learn_sigma True "
        "--diffusion_steps 1000 --noise_schedule linear --rescale_timesteps True --rescale_learned_sigmas True",
        32,
        16,
    ),
}
