"""Pair selection: global descriptors and neighbour search (:mod:`.global_descriptors`)."""
