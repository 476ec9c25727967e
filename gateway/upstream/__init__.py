"""The PACS: the DICOMweb client, its credentials, the per-PACS profiles, Orthanc's native ids and index,
and the ownership questions asked of what the PACS holds."""
