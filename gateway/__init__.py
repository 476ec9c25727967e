"""dicom-gateway: a small, safe API gateway in front of a DICOMweb PACS.

`app.create_app` wires the parts below into one Starlette app (docs/architecture.md):

- `edge`: HTTP limits, request context and access log, query parameters, body intake, content negotiation;
- `auth`: inbound tokens into a `Caller`, and the patient-scope rule;
- `dicom`: UIDs, VRs, DICOM JSON, Part 10 headers, the PatientID byte rule;
- `upstream`: the PACS client, its credentials, per-PACS profiles, ownership questions asked of the PACS;
- `store`: the database, its migrations, the new-exam events;
- `exams`, `worklist`, `callbacks`, `viewer`: one package per API area;
- `ops`: health, metrics, logs, the OpenAPI document and its page, `/uid`.
"""
