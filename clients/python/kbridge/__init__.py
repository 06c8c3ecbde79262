"""kbridge's Python client: sandboxes, their files and processes, and notebooks.

    from kbridge import Sandbox, CodeInterpreter

The API is E2B's Python SDK's (names exact). KBRIDGE_URL (default http://127.0.0.1:49999)
and KBRIDGE_TOKEN say which kbridge to use.
"""
from ._connection import ConnectionClosed, KBridgeError, TimeoutError
from .code_interpreter import CodeInterpreter, Error, Execution, Logs, Notebook, Result
from .sandbox import (FileInfo, Filesystem, FilesystemEvent, FilesystemOperation, FilesystemWatcher,
                      Process, ProcessManager, ProcessMessage, ProcessOutput, Sandbox, SandboxInfo)

SandboxException = KBridgeError

__all__ = ["Sandbox", "CodeInterpreter", "KBridgeError", "SandboxException", "TimeoutError",
           "ConnectionClosed", "Execution", "Result", "Logs", "Error", "Notebook", "FileInfo",
           "Filesystem", "FilesystemEvent", "FilesystemOperation", "FilesystemWatcher", "Process",
           "ProcessManager", "ProcessMessage", "ProcessOutput", "SandboxInfo"]
__version__ = "0.1.0"
