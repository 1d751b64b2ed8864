"""The sampling engine: sampling plans (plan.py) run in one sync-free loop over static buffers
(sampling_loop.py) by the runner (runner.py: the conditioned network, noise, loop cache, CUDA graph capture
via cuda_graph.py, compile), diffusers' eager loop for refused plans (eager_loop.py), and the largest batch
that fits (auto_batch.py)."""
