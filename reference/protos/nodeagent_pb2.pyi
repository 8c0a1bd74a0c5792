from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("app_id", "service")
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    app_id: str
    service: str
    def __init__(self, app_id: _Optional[str] = ..., service: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("outbound_address", "config_version")
    OUTBOUND_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    outbound_address: str
    config_version: int
    def __init__(self, outbound_address: _Optional[str] = ..., config_version: _Optional[int] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("app_id",)
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    app_id: str
    def __init__(self, app_id: _Optional[str] = ...) -> None: ...

class DeregisterReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAppsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AppInfo(_message.Message):
    __slots__ = ("app_id", "service", "outbound_address", "config_version")
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    OUTBOUND_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    app_id: str
    service: str
    outbound_address: str
    config_version: int
    def __init__(self, app_id: _Optional[str] = ..., service: _Optional[str] = ..., outbound_address: _Optional[str] = ..., config_version: _Optional[int] = ...) -> None: ...

class ListAppsReply(_message.Message):
    __slots__ = ("apps",)
    APPS_FIELD_NUMBER: _ClassVar[int]
    apps: _containers.RepeatedCompositeFieldContainer[AppInfo]
    def __init__(self, apps: _Optional[_Iterable[_Union[AppInfo, _Mapping]]] = ...) -> None: ...
