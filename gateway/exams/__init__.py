"""`/exams`: patient-scoped search, retrieval and upload (QIDO-RS, WADO-RS, STOW-RS)."""
