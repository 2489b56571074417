"""The control plane: management use-cases over the registry; the reconciler that drives serving."""
