"""Serving a published index: Hub download and cache, the starter index, and the service that holds it all."""
