"""Strawberry types, one module per type family; ``schema.build`` assembles the Schema.

This package root imports nothing: resolvers import the types, and the builder
imports the resolvers, so a module here must never pull the builder in.
"""
