"""Operations: the JSON-RPC management server (server, http), its error codes
(errors), the user and location methods (users), statistics and metrics
(stats), run-time changes (liveops), and sipsuite-ctl (ctl/).
"""
