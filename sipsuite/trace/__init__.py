"""The flight recorder's data: the bounded store of calls (store), the
ladder drawn in a terminal (ladder) and pcap files (pcap).  No Twisted:
sipsuite-ctl imports the last two."""
