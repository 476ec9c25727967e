"""What the platform team runs on: health and readiness, metrics, logs, the OpenAPI document and its page, `/uid`;
and the task each background loop runs in (`background`)."""
