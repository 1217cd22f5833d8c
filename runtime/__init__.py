"""The edge runtime: onnxruntime, numpy and OpenCV only.

Nothing here imports torch or any other part of linewatch (tests/test_layers.py proves it).
"""
