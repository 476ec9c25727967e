"""What arrives at the gateway's edge: HTTP limits, request context and access log, query parameters,
body intake (JSON, multipart/form-data, multipart/related) and content negotiation."""
