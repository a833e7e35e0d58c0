"""The registry's models (small CNN, ResNet50, ViT-tiny) and model FLOP counting."""
