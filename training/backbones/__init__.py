"""Backbones producing level-1 patch feature maps."""
