"""The runtimes the generated modules run on: NumPy ufunc helpers (numpy_runtime.py), CuPy kernel
caches (cupy_runtime.py), the generated native modules compiled for the host (native.py,
native_rows.py), the reduction-in-kernel public call (fastpath.py) and special functions
(special.py).
"""
