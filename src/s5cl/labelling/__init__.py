"""Layer 5: labels: which images to label, the labelling page, pseudo-labels."""
