"""Media: the RTP relay client (client) and its relay peers (peers), the
in-process relay adapter (local), and the SDP rewriting per call (manager).
"""
