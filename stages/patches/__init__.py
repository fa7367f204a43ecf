"""RDED's realistic patches: real crops scored by an observer teacher (stage: stages/rded.py)."""
