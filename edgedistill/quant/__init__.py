"""Quantization: INT8 post-training quantization through ONNX Runtime (and QAT)."""
