"""Wire formats: the client protocol and ringkv's own node-to-node messages."""

Addr = tuple[str, int]  # a UDP address: host (an IP literal) and port
Send = tuple[bytes, Addr]  # a datagram and where it goes
