"""The sampling engine: the sync-free loop over static buffers (sampling_loop.py), CUDA graph capture of
one step (cuda_graph.py), and the largest batch that fits (auto_batch.py)."""
