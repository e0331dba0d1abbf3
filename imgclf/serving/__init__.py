"""The HTTP server: the original's POST /classify on LitServe, its middlewares, lifecycle and metrics."""
