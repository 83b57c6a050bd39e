"""Fuzzing harnesses for the worker's wire format (see fuzz/codec_fuzz.py)."""
