"""Training-data synthesis: procedural SDF renders and diffusion appearance/backgrounds."""
