# Types of the messages that protoc generates into kv_pb2.py from kv.proto.
from google.protobuf.message import Message

class Msg(Message):
    messageID: bytes
    payload: bytes
    checkSum: int
    def __init__(
        self, *, messageID: bytes = ..., payload: bytes = ..., checkSum: int | None = ...
    ) -> None: ...

class KVRequest(Message):
    command: int
    key: bytes
    value: bytes
    version: int
    def __init__(
        self, *, command: int = ..., key: bytes = ..., value: bytes = ..., version: int = ...
    ) -> None: ...

class KVResponse(Message):
    errCode: int
    value: bytes
    pid: int
    version: int
    overloadWaitTime: int
    membershipCount: int
    def __init__(
        self,
        *,
        errCode: int | None = ...,
        value: bytes = ...,
        pid: int = ...,
        version: int = ...,
        overloadWaitTime: int = ...,
        membershipCount: int = ...,
    ) -> None: ...
