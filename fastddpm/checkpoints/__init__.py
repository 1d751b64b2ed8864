"""Checkpoint readers, one per format (files.py: safe file reading; read.py: diffusers folders and the
google/ddpm-* layout; original.py: the original DDPM layout; hub.py: Hub ids), and the diffusers-folder
writer (write.py)."""

from fastddpm.checkpoints.files import CheckpointError
from fastddpm.checkpoints.read import LoadedCheckpoint, read_checkpoint
from fastddpm.checkpoints.write import save_diffusers

__all__ = ["CheckpointError", "LoadedCheckpoint", "read_checkpoint", "save_diffusers"]
