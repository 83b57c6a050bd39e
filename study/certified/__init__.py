"""Certified training (IBP, CROWN-IBP) in torch: bounds for training only; every certificate
comes from radiusguard's sound domains."""
