"""Clustering a class's VAE latents into prototypes (D4M, VLCP) and picking VLCP's text prototypes."""
