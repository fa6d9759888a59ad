"""The Redis stores: the wire protocol (connection), the shared reconnecting
connection (client), key naming (keys), location, subscribers and the
client-side subscriber cache (cache).
"""
