"""Sessions: the record, its lifetime, and where it is kept (memory, cookie or Redis)."""

from secure_mw.session.manager import SessionManager, SessionRead, SessionStore
from secure_mw.session.memory_store import MemorySessionStore
from secure_mw.session.model import Session, new_session_id, session_digest

__all__ = [
    "MemorySessionStore",
    "Session",
    "SessionManager",
    "SessionRead",
    "SessionStore",
    "new_session_id",
    "session_digest",
]
