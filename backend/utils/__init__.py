"""Small helpers the stages share (no computer vision here)."""
