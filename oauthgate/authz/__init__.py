"""oauthgate.authz: the configuration-level authorizers and per-request query constraints."""

from oauthgate.authz.emails import EmailAuthorizer
from oauthgate.authz.groups import GroupsAuthorizer
from oauthgate.authz.query import DomainPattern, check_query_constraints

__all__ = ["DomainPattern", "EmailAuthorizer", "GroupsAuthorizer", "check_query_constraints"]
