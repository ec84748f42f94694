"""rlhf_dist: distributed RLHF on Ray."""
__version__ = "0.1.0"
