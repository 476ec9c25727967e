"""What the tests share: real servers started on loopback (Orthanc, PostgreSQL, receivers, the UPS-RS
simulator), generated DICOM files, tokens and request helpers."""
