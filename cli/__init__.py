"""`icans-risk`: parses options, calls one stage or the service, prints. The top layer."""
