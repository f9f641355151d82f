"""Request and response bodies, one module per resource. ``XCreate``: what a client sends;
``XPublic``: what it gets. Import them from their module (`schemas.classify`, ...)."""
