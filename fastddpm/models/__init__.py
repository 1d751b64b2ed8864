"""The networks: the diffusers-layout U-Net (unet.py, its blocks and config) on fastddpm's fused ops, and
the CPU convolution it uses (conv.py)."""
