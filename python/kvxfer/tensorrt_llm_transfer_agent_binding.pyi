"""TensorRT-LLM's transfer-agent binding API, served by kvxfer."""

from typing import Any, Optional, Sequence, Tuple, Union

NIXL_ENABLED: bool
MOONCAKE_ENABLED: bool

class MemoryType:
    DRAM: "MemoryType"
    VRAM: "MemoryType"
    BLK: "MemoryType"
    OBJ: "MemoryType"
    FILE: "MemoryType"

class TransferOp:
    READ: "TransferOp"
    WRITE: "TransferOp"

class TransferState:
    IN_PROGRESS: "TransferState"
    SUCCESS: "TransferState"
    FAILURE: "TransferState"

class MemoryDesc:
    addr: int
    len: int
    device_id: int
    def __init__(self, addr: int, len: int, device_id: int) -> None: ...

class MemoryDescs:
    type: MemoryType
    descs: list[MemoryDesc]
    def __init__(self, type: MemoryType, descs: Sequence[Union[MemoryDesc, Tuple[int, int, int]]]) -> None: ...
    @staticmethod
    def from_arrays(type: MemoryType, addrs: Any, sizes: Any, device_ids: Any) -> "MemoryDescs": ...
    @staticmethod
    def from_arrays_uniform_device(type: MemoryType, addrs: Any, sizes: Any, device_id: int) -> "MemoryDescs": ...

class AgentDesc:
    backend_agent_desc: bytes
    def __init__(self, backend_agent_desc: bytes) -> None: ...
    def serialize(self) -> bytes: ...
    @staticmethod
    def deserialize(data: bytes) -> "AgentDesc": ...

class TransferRequest:
    op: TransferOp
    src_descs: MemoryDescs
    dst_descs: MemoryDescs
    remote_name: str
    sync_message: Optional[Union[str, bytes]]
    def __init__(self, op: TransferOp, src_descs: MemoryDescs, dst_descs: MemoryDescs, remote_name: str,
                 sync_message: Optional[Union[str, bytes]] = None) -> None: ...

class TransferStatus:
    def is_completed(self) -> bool: ...
    def wait(self, timeout_ms: int = -1) -> TransferState: ...
    def get_last_status_str(self) -> str: ...
    def release(self) -> bool: ...

class NixlTransferStatus(TransferStatus): ...

class BaseAgentConfig:
    name: str
    use_prog_thread: bool
    multi_thread: bool
    use_listen_thread: bool
    enable_telemetry: bool
    backend_params: dict[str, str]
    rank: Optional[int]
    world_size: Optional[int]
    agent_buffer_size_mb: int
    bounce_params: dict[str, str]
    def __init__(self, name: str = "", use_prog_thread: bool = True, multi_thread: bool = False,
                 use_listen_thread: bool = False, enable_telemetry: bool = False,
                 backend_params: dict[str, str] = {}, rank: Optional[int] = None, world_size: Optional[int] = None,
                 agent_buffer_size_mb: int = 0, bounce_params: dict[str, str] = {}) -> None: ...

class BaseTransferAgent:
    bounce_enabled: bool
    bounce_submit_count: int
    def register_memory(self, descs: MemoryDescs) -> None: ...
    def deregister_memory(self, descs: MemoryDescs) -> None: ...
    def load_remote_agent(self, name: str, agent_desc: AgentDesc) -> None: ...
    def load_remote_agent_by_connection(self, name: str, connection_info: str) -> None: ...
    def get_local_agent_desc(self) -> AgentDesc: ...
    def get_local_connection_info(self) -> str: ...
    def invalidate_remote_agent(self, name: str) -> None: ...
    def submit_transfer_requests(self, request: TransferRequest) -> NixlTransferStatus: ...
    def notify_sync_message(self, name: str, sync_message: Union[str, bytes]) -> None: ...
    def get_notified_sync_messages(self) -> dict[str, list[Union[str, bytes]]]: ...
    def check_remote_descs(self, name: str, memory_descs: MemoryDescs) -> bool: ...
    def shutdown(self) -> None: ...

class NixlTransferAgent(BaseTransferAgent):
    def __init__(self, config: BaseAgentConfig) -> None: ...

def make_transfer_agent(backend: str, config: BaseAgentConfig) -> NixlTransferAgent: ...
