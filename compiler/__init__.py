"""The lossc compiler, one module per stage.

spec (load/validate YAML) → ir (SymPy per variant) → rewrites (stability rules) →
derive (gradients, lowering, CSE) → emit (one emitter per target) → build (files, --check).
"""
