"""Inputs and outputs: image checks (:mod:`.images`) and decoding (:mod:`.decode`), upright detection
(:mod:`.upright`), uploads (:mod:`.uploads`), the resumable h5 stores (:mod:`.h5cache`), weights (:mod:`.weights`),
exports (:mod:`.export`) and PLY rendering (:mod:`.pointcloud`)."""
