"""EdgeSAM on Ray: the model library (pure PyTorch)."""
__version__ = "0.1.0"
