"""The APIs users know on NumPy arrays: MXNet Gluon (gluon.py, public as ``lossc.gluon``) and
MMDetection (mmdet.py, ``lossc.mmdet``).
"""
