"""Layer 1, above the leaves: params.yaml's schema and loading, the training phases."""
