"""SfM Explorer backend: all computer vision lives here (never imports streamlit).

One package per stage family, in pipeline order: :mod:`.io` (images, uploads, h5 stores, weights, exports),
:mod:`.retrieval` (pairs), :mod:`.features` (extractors behind one registry), :mod:`.matchers` (matchers behind
one registry), :mod:`.mapping` (verification and pycolmap mapping), :mod:`.evaluation` (the official IMC metric).
:mod:`.pipeline` declares the stages and runs them over a run folder (the interface between everything);
:mod:`.jobs` runs pipelines in the background for the app; :mod:`.views` is what the pages read and draw.
"""

import os as _os

# OpenMP threads that spin while waiting collapse throughput when another process shares the cores (measured:
# LightGlue 9.3 s vs 1.6 s per pair on 2 busy cores). Must be set before torch loads its OpenMP runtime.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
