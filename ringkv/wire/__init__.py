"""Wire formats: the client protocol and ringkv's own node-to-node messages."""
