"""The core of the runtime: Loss objects and their registry, the weighting/reduction pipeline,
class-axis layouts, pair inputs, the target registry (targets.py) and what the framework
bridges share (bridge.py).
"""
