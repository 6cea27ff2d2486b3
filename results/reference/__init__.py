"""The reference results ``kbench reproduce`` compares with (installed as ``kbench.reference``)."""
