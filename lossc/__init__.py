"""lossc: losses declared once as SymPy formulas, compiled to stable NumPy/CuPy kernels."""
