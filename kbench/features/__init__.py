"""Images to patch features: patch schemes, frozen encoders, sharded stores, their extraction."""
