from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class WatchRequest(_message.Message):
    __slots__ = ("node_id", "services", "known_versions")
    class KnownVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    services: _containers.RepeatedScalarFieldContainer[str]
    known_versions: _containers.ScalarMap[str, int]
    def __init__(self, node_id: _Optional[str] = ..., services: _Optional[_Iterable[str]] = ..., known_versions: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ConfigUpdate(_message.Message):
    __slots__ = ("service", "version", "nonce", "config_json")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    service: str
    version: int
    nonce: str
    config_json: str
    def __init__(self, service: _Optional[str] = ..., version: _Optional[int] = ..., nonce: _Optional[str] = ..., config_json: _Optional[str] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("node_id", "service", "version", "nonce", "accepted", "error_detail")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    service: str
    version: int
    nonce: str
    accepted: bool
    error_detail: str
    def __init__(self, node_id: _Optional[str] = ..., service: _Optional[str] = ..., version: _Optional[int] = ..., nonce: _Optional[str] = ..., accepted: _Optional[bool] = ..., error_detail: _Optional[str] = ...) -> None: ...

class AckReply(_message.Message):
    __slots__ = ("recorded",)
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    def __init__(self, recorded: _Optional[bool] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "hostname", "facts", "applied_versions")
    class FactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AppliedVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    facts: _containers.ScalarMap[str, str]
    applied_versions: _containers.ScalarMap[str, int]
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., facts: _Optional[_Mapping[str, str]] = ..., applied_versions: _Optional[_Mapping[str, int]] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("interval_ms",)
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    interval_ms: int
    def __init__(self, interval_ms: _Optional[int] = ...) -> None: ...
