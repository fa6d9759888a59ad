"""The registrar (registrar), the location and subscriber stores (location, and
redis/ for Redis), and RFC 5626 outbound flows (outbound).
"""
