"""`/token` and `/dicomweb`: viewer tokens and the token-scoped DICOMweb endpoint.

`tokens` (viewer JWTs for one study), `token_issuer` (`GET /token`), `access` (who calls `/dicomweb` and what they
may reach), `dicomweb` (one handler per DICOMweb resource: search, retrieve, store), `relay` (Accept negotiation,
streams from the PACS, URLs pointed at the gateway), `query` (QIDO-RS query checks), `scoped_parts` (multipart
answers narrowed to the caller's parts), `routes` (the route tables).
"""
