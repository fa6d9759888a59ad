"""The proxy core: receive, validate (checks), route, relay and reply (proxy,
forwarding), the response context (context) and the transaction layer (txlayer,
timers); hookerrors turns a failing routing hook into the right answer.
"""
