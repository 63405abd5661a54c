"""OpenID Connect relying party: the client core and the session/endpoint core."""

from secure_mw.oidc.client import GrantRefused, OIDCClient, ProviderMetadata, TokenSet
from secure_mw.oidc.core import OIDCSessionCore, Outcome

__all__ = ["GrantRefused", "OIDCClient", "OIDCSessionCore", "Outcome", "ProviderMetadata",
           "TokenSet"]
