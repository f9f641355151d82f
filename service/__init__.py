"""promptserve service: the FastAPI application that serves classifier artifacts."""
