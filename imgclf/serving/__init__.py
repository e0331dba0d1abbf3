"""The HTTP server: the original's POST /classify on LitServe, its lifecycle and metrics."""
