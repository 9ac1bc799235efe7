"""gst_model: a ROS-free implementation of GST (Generative Spatial Transformer, ICLR 2025).

Importing this package is cheap and has no side effects; `GSTPipeline` is loaded on first use.
"""
from __future__ import annotations

__all__ = ["GSTPipeline", "PoseEstimate"]


def __getattr__(name: str):
    if name in __all__:
        from gst_model import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'gst_model' has no attribute {name!r}")
