"""FX passes that recognise NSA compression in user code and rewrite it to nsa_compress."""

from .fuse import fuse_nsa_compress
from .report import Candidate, FusionReport, collecting

__all__ = ["Candidate", "FusionReport", "collecting", "fuse_nsa_compress"]
