"""HTTP/1.x protocol pieces: request parsing, targets, responses, MIME types."""
