"""ringkv: a distributed key-value store speaking the CPEN 431 UDP protocol."""

__version__ = "0.1.0"
