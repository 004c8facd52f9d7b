"""Side-by-side cost benchmarks of the residual engine (`make bench` = `python -m benchmarks.run`).

Scripts, not library code: they build full-size SD1.5-architecture models with random weights, sample with Euler
and CFG, and print the per-run cost ratio (U-Net + k controls) / (U-Net), ours next to the host's native
ControlNet (when COMFYUI_PATH is set) and the FLOP ideal.
"""
