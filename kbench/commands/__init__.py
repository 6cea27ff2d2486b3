"""The ``kbench`` command line and the commands built on the layers below."""
