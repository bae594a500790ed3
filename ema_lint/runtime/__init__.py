"""Checkpoint-safe and fused modules that fixes and graph passes substitute in. Imports only torch."""
