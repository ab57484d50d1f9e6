"""Quantization: QAT (our own fake-quant), ORT static INT8 PTQ, accuracy-aware fallback, deliverable choice."""
