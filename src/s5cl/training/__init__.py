"""Layer 4: training: the loop, the methods and losses, batch streams, resume, devices, torchrun."""
