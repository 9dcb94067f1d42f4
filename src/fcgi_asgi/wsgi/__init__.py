"""The WSGI interface: a WSGI app in a bounded thread pool on the shared
request object, its environ straight from the CGI params."""
