"""The HTTP API: routes, request bodies and schemas, auth, error mapping, middleware."""
