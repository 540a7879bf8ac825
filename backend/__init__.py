"""SfM Explorer backend: all computer vision lives here (never imports streamlit).

Stages, one module each: :mod:`.images`, :mod:`.retrieval`, :mod:`.features`, :mod:`.matching`,
:mod:`.reconstruction`, :mod:`.export`, :mod:`.evaluate`; :mod:`.pipeline` runs them over a run folder.
"""
