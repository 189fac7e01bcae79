"""Layer 2: datasets from download to a packed memmap, splits, augmentation."""
