"""mdiff: a monthly latent-diffusion climate emulator and its AI-MIP submission pipeline."""

__version__ = "0.1.0"
