"""Training hooks registered in the mmdet registry."""

from .progressive_resize import ProgressiveResizeHook

__all__ = ["ProgressiveResizeHook"]
