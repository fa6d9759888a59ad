"""RTPProxy's control protocol, both sides: the sans-IO codec (protocol), the
client's command builder and reply parser (controller), and the encoding of
Call-IDs and tags into protocol tokens (ids).
"""
