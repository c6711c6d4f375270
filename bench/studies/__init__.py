"""Finished studies: measurements whose conclusion is in the README and that stay runnable.

``compression``: the baseline with and without permessage-deflate (``--no-compression``
skips it). ``floor``: the baseline's job on websockets' Sans-I/O ``ServerProtocol``, measured
next to the baseline in handshake, fan-out and idle (``--no-floor`` skips it).
"""
