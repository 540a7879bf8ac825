"""What the pages read and draw: run-folder readers (:mod:`.runview`) and figures (:mod:`.viz`). No computation of
the pipeline here."""
