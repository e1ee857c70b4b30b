"""Transformer upscaler architectures (SwinIR, HAT), built from a config that
gpu_worker.upscaler_layouts reads from a state dict. gpu_worker.upscalers picks and loads them."""
