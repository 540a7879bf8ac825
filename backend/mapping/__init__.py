"""Mapping, one job per module: the COLMAP database (:mod:`.database`), two-view verification (:mod:`.verification`),
the scenes of a mixed collection (:mod:`.scenes`), the three pycolmap mappers (:mod:`.mappers`), the camera policy
(:mod:`.cameras`), refinement after the mapper (:mod:`.refine`), folded models (:mod:`.disambiguation`,
:mod:`.unfold`), one collection (:mod:`.collection`) and a collection split into scenes (:mod:`.scene_mapping`), all
run in a child process (:mod:`.child`)."""
