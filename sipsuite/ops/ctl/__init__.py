"""sipsuite-ctl, the management command line: cli (commands and main), output
(how results are shown), liveops (the cfg/routing commands).
"""
