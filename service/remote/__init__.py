"""``promptserve serve --workers N``: N API worker processes sharing the port, one engine process
per service holding the model (see `service.remote.supervisor`)."""
