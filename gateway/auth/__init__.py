"""Who is calling: inbound tokens (JWT, JWKS) turned into a `Caller`, and the patient-scope rule."""
