"""SfM Explorer backend: all computer vision lives here (never imports streamlit).

Stages, one module each: :mod:`.images`, :mod:`.retrieval`, :mod:`.features`, :mod:`.matching`,
:mod:`.reconstruction`, :mod:`.export`, :mod:`.evaluate`; :mod:`.pipeline` runs them over a run folder.
"""

import os as _os

# OpenMP threads that spin while waiting collapse throughput when another process shares the cores (measured:
# LightGlue 9.3 s vs 1.6 s per pair on 2 busy cores). Must be set before torch loads its OpenMP runtime.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
