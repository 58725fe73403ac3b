"""reasondistill: distil an LLM teacher's reasoning into a small on-device student."""

__version__ = "0.1.0"
