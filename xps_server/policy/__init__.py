"""Access policy: IP access lists and the runtime block list."""
