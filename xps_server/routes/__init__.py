"""Route handlers: what each route type does with a request."""
