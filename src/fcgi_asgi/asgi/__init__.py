"""The ASGI interface: the HTTP bridge on the shared request object, the
scope built from CGI params, and the lifespan protocol."""
