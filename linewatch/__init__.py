"""linewatch: visual anomaly detection for factory lines.

Subpackages: ``linewatch.runtime`` (edge: onnxruntime + numpy + OpenCV), ``linewatch.training``
(torch), ``linewatch.export`` (torch -> ONNX bundle), ``linewatch.jobs`` (train, demo, ...).
This file must stay free of imports: the runtime is imported through it on the edge.
"""
