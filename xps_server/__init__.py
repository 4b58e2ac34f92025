"""eXpServer for Python: an nginx-style web server on an edge-triggered epoll loop."""
