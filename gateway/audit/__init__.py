"""The audit trail (`AUDIT_TRAIL=on`): who accessed which patient's data, and who was refused.

- `records`: an audit record, in DICOM PS3.15 A.5 terms;
- `messages`: a record as a PS3.15 A.5.1 XML audit message (`schema/`: the A.5.1.1 schema it validates against);
- `facts`, `classify`, `recorder`: what a request noted, the event it is, and the answer held until it is recorded;
- `journal`: group commit of records to the store (`store.audit`), so that an answer waits for its record;
- `syslog`, `shipper`: RFC 5424 messages over TCP/TLS to the audit record repository, at least once;
- `retention`, `routes`, `trail`: purging, `GET /audit-events`, and the parts as one component.
"""
