"""Numerics shared by every domain: outward rounding, activation codes, memory cap, threads."""
