"""kbench: a reproducible harness for vision-language pre-training in the fashion domain."""

__version__ = "0.1.0"
