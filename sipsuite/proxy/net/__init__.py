"""The network side of the proxy: listeners and sources (listener), UDP and the
transport layer (transport), TCP/TLS streams (stream) and their limits
(tcplimits), wildcard listen addresses (localaddr), STUN keep-alives (stun),
the DNS resolver (resolver) and the addresses the proxy advertises (addresses).
"""
