"""Layer 3: the network: backbones and their presets, the S5CL heads, model files."""
