"""S5CL: semi-supervised hierarchical contrastive learning (Tran et al., MICCAI 2022)."""

__version__ = "0.1.0"
