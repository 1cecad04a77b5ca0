"""Two-stage training (pixel, full), single process or torchrun + DDP."""
