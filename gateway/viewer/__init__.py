"""`/token` and `/dicomweb`: viewer tokens and the token-scoped DICOMweb endpoint."""
