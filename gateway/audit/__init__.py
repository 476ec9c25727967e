"""The audit trail (issue 13, in progress): who accessed which patient's data, and who was refused.

- `records`: an audit record, in DICOM PS3.15 A.5 terms;
- `messages`: a record as a PS3.15 A.5.1 XML audit message;
- `journal`: group commit of records to the store (`store.audit`), so that an answer waits for its record;
- `syslog`: RFC 5424 messages over TCP/TLS to the audit record repository.
"""
