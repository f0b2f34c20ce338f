"""The compression engine: applies a plan to a model (LR²VQ / PQ, quantizers, pruning, fine-tuning,
export). Its first part arrives with the engine issue; this package is its home in the layout."""
