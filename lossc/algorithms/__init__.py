"""The handwritten losses that are algorithms: CTC (ctc.py, its CUDA kernel in ctc_cuda.py) and
SSD multibox with hard negative mining (ssd.py, sampling.py).
"""
