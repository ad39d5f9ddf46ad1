"""specmoe.kernels: Triton kernels for tree attention and MoE expert computation.

Import the submodules (`tree_attention`, `moe`, `pack`, `ref`); this package imports nothing
heavy on its own so `specmoe` stays importable without torch.
"""
