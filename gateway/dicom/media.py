"""Media types of DICOMweb (PS3.18 §8.7.3), spelt exactly as the gateway sends and offers them.

Orthanc matches Accept literally (no lists, no q-values, no `image/*`), so upstream requests carry exactly one of these.
"""

from __future__ import annotations

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
JPEG = "image/jpeg"
PNG = "image/png"
# PS3.18 §8.7.3.5.2: without `transfer-syntax=*` a server may transcode to Explicit VR Little Endian; with it, the
# stored bytes come back as they are (what a download must return).
MULTIPART_DICOM_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
MULTIPART_OCTET = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
