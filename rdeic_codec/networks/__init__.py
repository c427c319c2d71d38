"""Neural networks of RDEIC: compression module, control module, UNet walk and VAE helpers."""
