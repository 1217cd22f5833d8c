"""torch -> ONNX bundle: export, parity check, manifest."""
