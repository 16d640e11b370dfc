"""Delivery: subscriptions receive events as HTTP requests, retried until they land."""
