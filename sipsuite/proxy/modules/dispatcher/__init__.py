"""Kamailio's dispatcher module: destination sets and their selection
(dispatcher), the dispatcher.list file (lists) and OPTIONS probing (probe).
"""
