"""Evaluation: the official IMC 2025 metric and the pose-table readers (:mod:`.imc_metric`)."""
