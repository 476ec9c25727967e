"""What the platform team runs on: health and readiness, metrics, logs, the OpenAPI document and its page, `/uid`."""
