"""The HTTP edge: the app, its metrics, and a server runner."""
