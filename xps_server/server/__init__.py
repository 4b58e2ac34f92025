"""The running server: the container (`core`), sessions, runtime state, accounting, the access
log and the operator's commands. Everything above the route handlers."""
