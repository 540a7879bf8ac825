"""The two-view lab: one image pair matched, verified and (with ground truth) scored.

- :mod:`.geometry`: robust two-view geometry (PoseLib LO-RANSAC or OpenCV USAC), COLMAP's model selection rule;
- :mod:`.groundtruth`: ground truth from IMC pose CSVs and SuperGlue-style pair files, pose errors, pose AUC,
  match precision;
- :mod:`.pair`: two photos in, similarity, matches, geometry and errors out (the CLI ``twoview``, the API's
  ``POST /v1/match`` and the Two-view page).
"""
