"""The FastCGI wire side: the record codec, the connection, and the request
object every interface (ASGI, WSGI) sits on."""
