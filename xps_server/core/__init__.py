"""The engine: event loop, core container, pipes and sessions."""
