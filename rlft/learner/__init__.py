"""Learners: own the optimizer, micro-batching, accumulation and clipping; the loop supplies the loss."""
