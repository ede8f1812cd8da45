"""HTTP transport: FastAPI routers (thin), schemas, error mapping, middleware."""
