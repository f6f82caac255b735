"""BiT (Big Transfer) in JAX/Flax: ResNet-v2 models, official checkpoints, training, transfer."""
