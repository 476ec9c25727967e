"""dicom-gateway: a small, safe API gateway in front of a DICOMweb PACS.

`components.build` turns settings into the parts below, `app.create_app` wires them into one Starlette app and
`lifespan` opens and closes them (docs/architecture.md):

- `edge`: HTTP limits, request context and access log, query parameters, body intake, content negotiation;
- `auth`: inbound tokens into a `Caller`, and the patient-scope rule;
- `dicom`: UIDs, VRs, DICOM JSON, Part 10 headers, the PatientID byte rule;
- `upstream`: the PACS client, its credentials, per-PACS profiles, ownership questions asked of the PACS;
- `store`: the database, its migrations, the new-exam events;
- `exams`, `worklist`, `callbacks`, `viewer`: one package per API area;
- `ops`: health, metrics, logs, the OpenAPI document and its page, `/uid`.
"""
