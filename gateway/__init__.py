"""dicom-gateway: a small, safe API gateway in front of a DICOMweb PACS."""
