"""The twins of Kamailio modules the default routing uses: auth, antiflood
(pike + htable bans), accounting (acc), nat (nathelper), natping (nathelper
keep-alives) and dispatcher.
"""
