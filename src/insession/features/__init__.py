"""Features: streaming (per event, from session state), request-time, and long-term."""
