"""Task cards: one versioned YAML file per downstream task (installed as ``kbench.cards``)."""
