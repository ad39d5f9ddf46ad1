"""specmoe: simulator, planner and runtime for MoE serving with expert parallelism and speculative decoding."""
__version__ = "0.1.0"
