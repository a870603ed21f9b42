"""Training of the built-in model: the autoencoder, a latent dataset from the procedural world, the causal DiT.

    framecast train all --out runs/tiny      # autoencoder -> latents -> DiT -> model folder runs/tiny/model

Every stage is seeded, resumable (`--resume`), checkpoints periodically and shows a progress bar.
"""
