"""Training of the small profile: autoencoder, base denoiser, RDEIC stage 1 and stage 2."""
