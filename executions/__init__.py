"""Live execution updates over WebSockets, on Django Channels."""
