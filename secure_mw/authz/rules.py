"""Access rules: compiled once at start-up, evaluated per request, first match wins.

:meth:`AccessPolicy.from_settings` turns ``[access_control]`` into an :class:`AccessPolicy`;
every problem is collected into one :class:`~secure_mw.errors.ConfigError`, each naming
``access_control.rules[i].<field>``. :meth:`AccessPolicy.evaluate` answers a
:class:`Decision` for one request, given the path already normalized by
:func:`secure_mw.authz.paths.normalize_path`; :meth:`AccessPolicy.explain` runs the same
evaluation and also says why each earlier rule did not decide. :meth:`AccessPolicy.unreachable`
names the rules an earlier rule always decides for (a start-up warning).

Rule fields (all optional; an absent field matches everything):

``domain``
    Exact host names or ``*.example.com`` wildcards (any depth of subdomain, not
    ``example.com`` itself); the request host is compared lowercased, without port or final dot.
``domain_regex``
    Regular expressions, full-matched against that host. A rule matches the host when a
    ``domain`` *or* a ``domain_regex`` entry does.
``resources``
    Regular expressions searched (``re.search``: anchor with ``^``/``$``) in the normalized
    path only, never the query string (Authelia appends the query; ``query`` is the field for
    it here), so ``^/admin$`` also covers ``/admin?x=1``.
``methods``
    HTTP methods (a WebSocket handshake counts as ``GET``). ``GET`` selects ``HEAD`` too:
    a server answers ``HEAD`` with the ``GET`` handler minus the body (RFC 9110 §9.3.2).
``networks``
    CIDRs, bare addresses or names of ``access_control.networks`` entries. An empty or
    unparsable client address matches no network.
``subject``
    ``user:<sub>``, ``group:<name>``, ``email:<address>``; a list of lists is an OR of ANDs.
    An ``email:`` term of a rule that admits matches a verified email only; one of a ``deny``
    rule matches the claimed email, verified or not (see "Emails and polarity" below). A
    rule selected by its other fields is a gate: a signed-in user it does not name is
    refused (``"rule i: subject does not match"``), an anonymous one sent to the login.
    Exceptions: a ``deny`` rule concerns only its subjects, and
    ``subject_mismatch = "continue"`` passes the others on to later rules (Authelia's way).
``query``
    Conditions on query parameters (a query string too large to parse denies the request at
    the first rule that has conditions): a list of ``{key, value?, operator?}`` tables, all of which
    must hold, or a list of such lists (OR of ANDs). ``operator`` is one of ``equal`` (default
    when a ``value`` is given), ``not equal``, ``present`` (default without a value),
    ``absent``, ``pattern`` and ``not pattern`` (``value`` is a regular expression, searched).
    ``equal``/``pattern`` hold when *some* value of the key does; their negations when *none*
    does (an absent key included). A request that repeats a key one of these four operators
    names is ambiguous (frameworks read its first or its last value): the rule refuses it
    with the effect ``"bad_request"`` (400).
``policy``
    ``bypass`` (allow anyone), ``authenticated``, ``two_factor`` or ``deny``.
``allow`` / ``deny``
    Pomerium-style blocks (see the section below).

Effects: an anonymous request reaching a rule that a login could satisfy gets ``"login"``, a
one-factor identity on a ``two_factor`` rule gets ``"two_factor"``. An anonymous request on a
rule with a ``subject`` gets ``"login"`` (a ``deny`` rule with a subject does not apply to it).

Pomerium-style blocks
---------------------
``allow`` and ``deny`` are tables of logical operators, each a list of items; several operators
in one table must all hold. ``and``: every item; ``or``: some item; ``not``: no item;
``nor``: not every item (Pomerium's documented meanings). An item is a table with exactly one
key: a criterion or a nested operator. Criteria and their values:

* ``accept: true``, ``reject: true``, ``authenticated_user: true``
* ``email``, ``domain`` (of the email; see "Emails and polarity"), ``user`` (the
  ``sub``), ``http_method`` (a ``HEAD`` request also matches what ``GET`` matches),
  ``http_path`` (the normalized path, without the query): a string matcher — a bare string
  (``is``) or a table of ``is``, ``in`` (list), ``starts_with``, ``ends_with``, ``contains``
  (all given must hold). ``email``, ``domain`` and ``http_method`` fold ASCII letters only
  (``str.lower`` would turn the Kelvin sign U+212A into ``k``).
* ``groups``: a list matcher — a bare string (``has``) or a table of ``has`` and ``exclude``.
* ``claim/<name>[/<name>...]``: the (nested) claim equals the value, or, when the claim is a
  list, contains it; a list of values means any of them. The raw claim: ``claim/email``
  knows nothing of verification. :func:`claim_names` lists the top-level names, which the
  session keeps for the rules.
* ``source_ip``: a CIDR, address or named network, or a list of them.
* ``cors_preflight: true``: an ``OPTIONS`` request with ``Origin`` and
  ``Access-Control-Request-Method``.
* ``day_of_week``: ``"mon-fri"``, ``"sat,sun"`` or a table ``{is: ..., timezone: ...}``.
* ``time_of_day``: a table ``{after: "08:00", before: "18:00", timezone: "Europe/Paris"}``
  (``after`` inclusive, ``before`` exclusive; a range may wrap past midnight).

Identity criteria on an anonymous request are *unknown* (three-valued logic): a ``deny`` block
that is unknown, or an ``allow`` block that is unknown, answers ``"login"``, so ``not`` cannot
turn "nobody logged in" into access. A matching ``deny`` beats any ``allow``; when neither
holds the rule denies (it was selected by its other fields, first match wins). A ``policy``
given next to the blocks adds its requirement to an allow (``two_factor``, ``authenticated``).

Emails and polarity
-------------------
An unverified email could be anyone's, so it must never grant; but an identity that claims a
deny-listed address must still be denied. Each email criterion is compiled with its polarity:
it *grants* in an ``allow`` block (and in the subject of a rule that admits) and *restricts*
in a ``deny`` block (and in the subject of a ``deny`` rule); each ``not`` or ``nor`` flips it.
A granting criterion sees only a verified email; a restricting one sees the claimed email.

For tests, :attr:`AccessPolicy.rules_tested` counts compiled rules examined.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timezone, tzinfo
from typing import Any, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from secure_mw.errors import ConfigError, ConfigProblem
from secure_mw.http import MAX_QUERY, RequestView, _few_fields
from secure_mw.identity import Identity
from secure_mw.settings import AccessControlSettings, AccessRule

if sys.version_info >= (3, 11):
    from re import _parser as _sre_parse
else:
    import sre_parse as _sre_parse

__all__ = ["AccessPolicy", "Decision", "Effect", "Explanation", "Step", "claim_names"]

# "bad_request": the request is ambiguous for the deciding rule (a repeated query key), 400.
Effect: TypeAlias = Literal["allow", "deny", "login", "two_factor", "bad_request"]
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
# Three-valued truth: None means "unknown until someone logs in".
Tri: TypeAlias = bool | None

POLICIES = ("bypass", "authenticated", "two_factor", "deny")
METHODS = frozenset({
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    "COPY", "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "UNLOCK",
})
_RULE_FIELDS = ("domain", "domain_regex", "resources", "methods", "networks", "subject",
                "subject_mismatch", "query", "policy", "allow", "deny")
# Earlier rules :meth:`AccessPolicy.unreachable` tries against each rule, at most.
_COVER_CANDIDATES = 32
# Query operators that read a key's values (a repeated key makes them ambiguous).
_VALUE_OPERATORS = frozenset({"equal", "not equal", "pattern", "not pattern"})
# Folds ASCII letters only: emails and domains compare without Unicode case folding.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(text: str) -> str:
    return text.translate(_ASCII_LOWER)


class _Refusal(str):
    """What :meth:`_Rule.mismatch` answers when the rule cannot judge the request: the rule
    refuses it with ``effect`` (a sentence, the reason)."""

    effect: Effect

    def __new__(cls, reason: str, effect: Effect) -> _Refusal:
        self = super().__new__(cls, reason)
        self.effect = effect
        return self


# What :meth:`_Rule.mismatch` answers when a rule's query conditions cannot be evaluated.
_QUERY_UNREADABLE = _Refusal("query string too large to evaluate", "deny")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request: ``rule`` is the matching rule's index (None: default)."""

    effect: Effect
    rule: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Step:
    """One rule :meth:`AccessPolicy.explain` looked at: ``decides`` is false for a rule that
    let the request go on, with ``reason`` naming the first field that did not match."""

    rule: int
    text: str
    decides: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """:meth:`AccessPolicy.explain`'s answer: the decision (exactly :meth:`evaluate`'s),
    the host and path the rules saw, and every rule up to the deciding one, in order."""

    decision: Decision
    host: str
    path: str
    steps: tuple[Step, ...]


# ---------------------------------------------------------------------------------------------
# per-request context


class _Ctx:
    """What rules look at, computed lazily once per request."""

    __slots__ = ("_addr", "_params", "host", "identity", "now", "path", "view")

    def __init__(self, view: RequestView, identity: Identity | None, path: str, host: str,
                 now: Callable[[], datetime]) -> None:
        self.view = view
        self.identity = identity
        self.path = path
        self.host = host
        self.now = now
        self._addr: Address | bool | None = False
        self._params: dict[str, list[str]] | None = None

    @property
    def addr(self) -> Address | None:
        if self._addr is False:
            try:
                self._addr = ipaddress.ip_address(self.view.client) if self.view.client else None
            except ValueError:
                self._addr = None
        return self._addr  # type: ignore[return-value]

    @property
    def params(self) -> dict[str, list[str]] | None:
        """The query parameters, or None when the query string is beyond what
        :meth:`RequestView.query` parses (it would answer none, and the app might see some)."""
        if self._params is None:
            qs = self.view.query_string
            if len(qs) > MAX_QUERY or not _few_fields(qs):
                return None
            self._params = self.view.query()
        return self._params


def _in_networks(ctx: _Ctx, networks: Sequence[Network]) -> bool:
    addr = ctx.addr
    if addr is None:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


def _host_of(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


# ---------------------------------------------------------------------------------------------
# compiled rules

Pred: TypeAlias = Callable[[_Ctx], Tri]


@dataclass(slots=True)
class _Query:
    key: str
    operator: str
    value: str | None
    pattern: re.Pattern[str] | None

    @property
    def key_tuple(self) -> tuple[str, str, str | None]:
        return (self.key, self.operator, self.value)

    def holds(self, params: Mapping[str, list[str]]) -> bool:
        values = params.get(self.key)
        if self.operator == "present":
            return values is not None
        if self.operator == "absent":
            return values is None
        values = values or []
        if self.pattern is not None:
            some = any(self.pattern.search(v) for v in values)
        else:
            some = self.value in values
        return some if self.operator in ("equal", "pattern") else not some


@dataclass(slots=True)
class _Rule:
    index: int
    policy: str | None
    exact: frozenset[str] = frozenset()
    wildcards: tuple[str, ...] = ()           # ".example.com"
    host_regex: tuple[re.Pattern[str], ...] = ()
    resources: tuple[re.Pattern[str], ...] = ()
    methods: frozenset[str] | None = None
    networks: tuple[Network, ...] | None = None
    subject: tuple[tuple[tuple[str, str], ...], ...] = ()
    query: tuple[tuple[_Query, ...], ...] = ()
    query_keys: frozenset[str] = frozenset()   # keys whose values a condition reads
    allow: Pred | None = None
    deny: Pred | None = None
    has_ppl: bool = False
    mismatch_continue: bool = False          # subject_mismatch = "continue"
    text: str = ""                           # a short rendering, for explain and warnings
    query_like: tuple[int, ...] = ()         # resources that look for a "?" (a warning)
    net_ranges: tuple[tuple[int, int, int], ...] = ()   # (version, first, last) of networks

    @property
    def indexable(self) -> bool:
        return bool(self.exact or self.wildcards) and not self.host_regex

    def host_matches(self, host: str) -> bool:
        if not (self.exact or self.wildcards or self.host_regex):
            return True
        if host in self.exact or any(host.endswith(w) for w in self.wildcards):
            return True
        return any(r.fullmatch(host) for r in self.host_regex)

    def mismatch(self, ctx: _Ctx) -> str | None:
        """The first request-shaped field (everything but subject, policy and blocks) that
        does not match, or None when the rule selects the request; the host is checked
        apart. A :class:`_Refusal` when the query conditions cannot be evaluated: the query
        string is too large to parse, or it repeats a key a condition reads."""
        if self.methods is not None and ctx.view.method not in self.methods:
            return "methods"
        if self.networks is not None and not _in_networks(ctx, self.networks):
            return "networks"
        if self.resources:
            path = ctx.path
            if not any(r.search(path) for r in self.resources):
                return "resources"
        if self.query:
            params = ctx.params
            if params is None:
                return _QUERY_UNREADABLE
            for key in self.query_keys:
                if len(params.get(key, ())) > 1:
                    return _Refusal(f"repeated query key {key}", "bad_request")
            if not any(all(q.holds(params) for q in group) for group in self.query):
                return "query"
        return None

    @property
    def selects_everything(self) -> bool:
        """No request field: every request is selected."""
        return not (self.exact or self.wildcards or self.host_regex or self.resources
                    or self.methods is not None or self.networks is not None or self.query)

    @property
    def always_decides(self) -> bool:
        """Whether every request this rule selects ends here (whoever makes it)."""
        return not self.subject or (self.policy != "deny" and not self.mismatch_continue)

    def covers(self, later: _Rule) -> bool:
        """Whether this rule selects every request ``later`` selects (a sufficient test on
        the compiled fields: regexes are compared as text)."""
        if self.exact or self.wildcards or self.host_regex:
            if not (later.exact or later.wildcards or later.host_regex):
                return False
            if not all(self.host_matches(h) for h in later.exact):
                return False
            if not all(any(w.endswith(mine) for mine in self.wildcards)
                       for w in later.wildcards):
                return False
            mine_rx = {r.pattern for r in self.host_regex}
            if not all(r.pattern in mine_rx for r in later.host_regex):
                return False
        if self.resources:
            mine_res = {r.pattern for r in self.resources}
            if not later.resources or not all(r.pattern in mine_res for r in later.resources):
                return False
        if self.methods is not None and (later.methods is None
                                         or not later.methods <= self.methods):
            return False
        if self.networks is not None and (later.networks is None or not all(
                any(v == mv and lo >= mlo and hi <= mhi for mv, mlo, mhi in self.net_ranges)
                for v, lo, hi in later.net_ranges)):
            return False
        if self.query:
            if not later.query:
                return False
            mine_q = [{q.key_tuple for q in g} for g in self.query]
            if not all(any(m <= {q.key_tuple for q in g} for m in mine_q)
                       for g in later.query):
                return False
        return True

    def subject_holds(self, identity: Identity) -> bool:
        # A deny rule's subject restricts: the claimed email counts. Any other grants: only
        # a verified one.
        email = _fold(identity.email) if identity.email_verified or self.policy == "deny" \
            else ""
        for group in self.subject:
            if all(_subject_item(kind, value, identity, email) for kind, value in group):
                return True
        return False


def _subject_item(kind: str, value: str, identity: Identity, email: str) -> bool:
    if kind == "user":
        return identity.sub == value
    if kind == "group":
        return value in identity.groups
    return bool(email) and email == value


# ---------------------------------------------------------------------------------------------
# the policy


class AccessPolicy:
    """Compiled ``[access_control]``; build with :meth:`from_settings`."""

    def __init__(self, rules: Sequence[_Rule], default_policy: str,
                 now: Callable[[], datetime]) -> None:
        self._rules = tuple(rules)
        self.default_policy = default_policy
        self._now = now
        self._exact: dict[str, list[int]] = {}
        self._wild: dict[str, list[int]] = {}
        self._general: list[int] = []
        for pos, rule in enumerate(self._rules):
            if rule.indexable:
                for host in rule.exact:
                    self._exact.setdefault(host, []).append(pos)
                for suffix in rule.wildcards:
                    self._wild.setdefault(suffix, []).append(pos)
            else:
                self._general.append(pos)
        self._merged: dict[str, list[int]] = {}
        #: The top-level claims ``claim/…`` criteria read (:func:`claim_names`).
        self.claim_names: frozenset[str] = frozenset()
        #: Number of compiled rules examined so far (for tests and benchmarks).
        self.rules_tested = 0

    def __len__(self) -> int:
        return len(self._rules)

    @classmethod
    def from_settings(cls, access_control: AccessControlSettings, *,
                      now: Callable[[], datetime] | None = None) -> AccessPolicy:
        """Compile every rule; raise one ConfigError listing every problem found.

        ``now`` (aware datetimes) is the clock of ``day_of_week``/``time_of_day``."""
        problems: list[ConfigProblem] = []
        named = _compile_named_networks(access_control.networks, problems)
        default = access_control.default_policy
        if default not in POLICIES:
            problems.append(ConfigProblem("access_control.default_policy",
                                          f"{default!r} is not one of {', '.join(POLICIES)}"))
        rules = []
        for i, rule in enumerate(access_control.rules):
            compiled = _Compiler(i, named, problems).rule(rule)
            if compiled is not None:
                rules.append(compiled)
        if problems:
            raise ConfigError(problems)
        policy = cls(rules, default, now or (lambda: datetime.now(timezone.utc)))
        policy.claim_names = claim_names(access_control)
        return policy

    @classmethod
    def requirement(cls, groups: str | Iterable[str] = (), auth_level: int = 1
                    ) -> AccessPolicy:
        """The policy of one view requirement (the integrations' ``require()``): a single
        rule for a signed-in user in any one of ``groups`` (none given: any user), with a
        second factor when ``auth_level`` is 2; everything else denied. ``ValueError`` for
        an ``auth_level`` other than 1 or 2, or a group name a subject cannot hold."""
        if auth_level not in (1, 2):
            raise ValueError("auth_level is 1 (a password or the provider's login) or 2 (a "
                             f"second factor), not {auth_level!r}")
        names = list(dict.fromkeys([groups] if isinstance(groups, str) else groups))
        rule: dict[str, Any] = {"policy": "two_factor" if auth_level == 2 else "authenticated"}
        if names:
            rule["subject"] = [[f"group:{name}"] for name in names]      # any of them
        from secure_mw.settings import Settings

        try:
            access = Settings.from_mapping({"access_control": {
                "default_policy": "deny", "rules": [rule]}}, environ={}).access_control
        except ConfigError as exc:
            raise ValueError(f"require(groups={names!r}): {exc}") from None
        return cls.from_settings(access)

    @property
    def memoizable(self) -> bool:
        """Whether every decision depends only on the host, the method, the normalized
        path and who the subject is (user, groups, e-mail, factors): no rule reads the
        client's address, the query string, the time or anything else a policy block may
        look at. The authorization layer then remembers its allow decisions."""
        return not any(rule.networks is not None or rule.query or rule.has_ppl
                       for rule in self._rules)

    # -- lookup ----------------------------------------------------------------------------

    def _candidates(self, host: str) -> Sequence[int]:
        """Positions of the rules that can match ``host``, in rule order: its exact bucket,
        the buckets of its wildcard suffixes and the general rules. Merged lists are cached
        by the set of buckets hit (bounded by the configuration, not by client hosts)."""
        keys: list[str] = []
        if host in self._exact:
            keys.append("=" + host)
        dot = host.find(".")
        while dot != -1:
            if host[dot:] in self._wild:
                keys.append("*" + host[dot:])
            dot = host.find(".", dot + 1)
        if not keys:
            return self._general
        key = "\0".join(keys)
        found = self._merged.get(key)
        if found is None:
            lists = [(self._exact if k[0] == "=" else self._wild)[k[1:]] for k in keys]
            found = sorted({pos for lst in (*lists, self._general) for pos in lst})
            self._merged[key] = found
        return found

    # -- evaluation ------------------------------------------------------------------------

    def evaluate(self, view: RequestView, identity: Identity | None, *, path: str) -> Decision:
        """The decision for ``view`` made by ``identity`` (None: anonymous); ``path`` is the
        normalized path (:func:`~secure_mw.authz.paths.normalize_path`)."""
        return self._run(view, identity, path, None)

    def explain(self, view: RequestView, identity: Identity | None, *,
                path: str) -> Explanation:
        """:meth:`evaluate`, with the reason each rule before the deciding one let the
        request go on (the same code path: the two cannot disagree)."""
        passed: dict[int, str] = {}
        decision = self._run(view, identity, path, passed)
        host = _host_of(view.host)
        steps = []
        for pos, rule in enumerate(self._rules):
            if rule.index == decision.rule:
                steps.append(Step(rule.index, rule.text, True, decision.reason))
                break
            why = passed.get(pos, "domain")       # not a candidate: the host index left it out
            steps.append(Step(rule.index, rule.text, False, _detail(why, rule, host, path)))
        return Explanation(decision, host, path, tuple(steps))

    def _run(self, view: RequestView, identity: Identity | None, path: str,
             passed: dict[int, str] | None) -> Decision:
        """The evaluation; ``passed``, when given, gets why each examined rule did not
        decide (by position)."""
        if not isinstance(identity, Identity):
            identity = None
        host = _host_of(view.host)
        ctx = _Ctx(view, identity, path, host, self._now)
        rules = self._rules
        for pos in self._candidates(host):
            rule = rules[pos]
            self.rules_tested += 1
            if not rule.indexable and not rule.host_matches(host):
                if passed is not None:
                    passed[pos] = "domain"
                continue
            miss = rule.mismatch(ctx)
            if miss is not None:
                if isinstance(miss, _Refusal):
                    return Decision(miss.effect, rule.index, f"rule {rule.index}: {miss}")
                if passed is not None:
                    passed[pos] = miss
                continue
            if rule.subject:
                if identity is None:
                    if rule.policy == "deny" and not rule.has_ppl:
                        # a deny for named subjects does not concern anonymous requests
                        if passed is not None:
                            passed[pos] = ("subject: a deny rule for named subjects does not "
                                           "concern anonymous requests")
                        continue
                    return Decision("login", rule.index,
                                    f"rule {rule.index}: needs a login to match its subject")
                if not rule.subject_holds(identity):
                    if rule.policy == "deny" or rule.mismatch_continue:
                        if passed is not None:
                            passed[pos] = "subject: does not match " + (
                                "(a deny rule concerns only its subjects)"
                                if rule.policy == "deny" else "(subject_mismatch = continue)")
                        continue
                    return Decision("deny", rule.index,
                                    f"rule {rule.index}: subject does not match")
            return _apply(rule, ctx)
        return _policy_effect(self.default_policy, identity, None, "default policy")

    # -- configuration analysis ------------------------------------------------------------

    def unreachable(self) -> list[tuple[int, int]]:
        """``(later, earlier)`` for each rule that can never decide because an earlier one
        selects every request it selects and always decides them (no subject, or a subject
        that refuses the users it does not name). Sufficient, not complete: regexes are
        compared as text. Everything after a catch-all is found; otherwise candidates come
        from an index by host and first resource, at most :data:`_COVER_CANDIDATES` of them
        per rule, so a long rule list costs about linear time."""
        found: list[tuple[int, int]] = []
        deciders: dict[tuple[str, str], list[int]] = {}
        catch_all: int | None = None
        for pos, rule in enumerate(self._rules):
            if catch_all is not None:
                found.append((rule.index, catch_all))
                continue
            candidates = sorted({p for key in _cover_lookup(rule)
                                 for p in deciders.get(key, ())[:_COVER_CANDIDATES]})
            for p in candidates[:_COVER_CANDIDATES]:
                if self._rules[p].covers(rule):
                    found.append((rule.index, self._rules[p].index))
                    break
            if rule.always_decides and rule.selects_everything:
                catch_all = rule.index
            if rule.always_decides:
                for key in _cover_keys(rule):
                    deciders.setdefault(key, []).append(pos)
        return found

    def warnings(self) -> list[str]:
        """What :meth:`unreachable` found, as sentences naming both rules, and resources
        that need a ``?`` to match (they only ever see the path)."""
        text = {r.index: r.text for r in self._rules}
        out = [f"access_control.rules[{r.index}].resources[{j}] matches only a path with a "
               "'?' in it, but resources never see the query string: put conditions on the "
               "query string in 'query'"
               for r in self._rules for j in r.query_like]
        out += [f"access_control.rules[{later}] can never apply: rule {earlier} "
                f"({text[earlier]}) selects every request it would and decides them first"
                for later, earlier in self.unreachable()]
        return out


def _host_keys(rule: _Rule) -> list[str]:
    return ([f"={h}" for h in rule.exact] + [f"*{w}" for w in rule.wildcards]
            + (["~"] if rule.host_regex else [])) or [""]


def _cover_keys(rule: _Rule) -> list[tuple[str, str]]:
    """Where a rule that always decides is filed for :meth:`AccessPolicy.unreachable`."""
    resources = [r.pattern for r in rule.resources] or [""]
    return [(h, r) for h in _host_keys(rule) for r in resources]


def _cover_lookup(rule: _Rule) -> list[tuple[str, str]]:
    """The keys under which any rule covering ``rule`` is filed: it has no host constraint or
    one matching ``rule``'s first host (or a host regex), and no resources or ``rule``'s
    first resource."""
    hosts = [""] + (["~"] if rule.exact or rule.wildcards or rule.host_regex else [])
    if rule.exact:
        first = min(rule.exact)
        hosts.append("=" + first)
        hosts += ["*" + first[i:] for i in range(len(first)) if first[i] == "."]
    elif rule.wildcards:
        first = rule.wildcards[0]
        hosts += ["*" + first[i:] for i in range(len(first)) if first[i] == "."]
    resources = [""] + ([rule.resources[0].pattern] if rule.resources else [])
    return [(h, r) for h in hosts for r in resources]


def _detail(field_name: str, rule: _Rule, host: str, path: str) -> str:
    """A sentence for :meth:`AccessPolicy.explain` from the field :meth:`_Rule.mismatch`
    named."""
    if field_name == "domain":
        return f"domain: the host {host!r} is not among its domains"
    if field_name == "resources":
        return f"resources: no pattern matches the path {path!r}"
    if field_name == "methods":
        return f"methods: the method is not among {', '.join(sorted(rule.methods or ()))}"
    if field_name == "networks":
        return "networks: the client address is in none of them"
    if field_name == "query":
        return "query: the query parameters do not meet its conditions"
    return field_name           # already a sentence


def _policy_effect(policy: str | None, identity: Identity | None, index: int | None,
                   why: str) -> Decision:
    if policy == "bypass":
        return Decision("allow", index, f"{why}: bypass")
    if policy == "deny":
        return Decision("deny", index, f"{why}: deny")
    if identity is None:
        return Decision("login", index, f"{why}: {policy} needs a login")
    if policy == "two_factor" and not identity.two_factor:
        return Decision("two_factor", index, f"{why}: two_factor needs a second factor")
    return Decision("allow", index, f"{why}: {policy}")


def _apply(rule: _Rule, ctx: _Ctx) -> Decision:
    why = f"rule {rule.index}"
    if not rule.has_ppl:
        return _policy_effect(rule.policy, ctx.identity, rule.index, why)
    if rule.deny is not None:
        verdict = rule.deny(ctx)
        if verdict is True:
            return Decision("deny", rule.index, f"{why}: deny block matched")
        if verdict is None:
            return Decision("login", rule.index, f"{why}: deny block needs a login")
    verdict = False if rule.allow is None else rule.allow(ctx)
    if verdict is None:
        return Decision("login", rule.index, f"{why}: allow block needs a login")
    if not verdict:
        return Decision("deny", rule.index, f"{why}: allow block did not match")
    if rule.policy in ("authenticated", "two_factor", "deny"):
        return _policy_effect(rule.policy, ctx.identity, rule.index, why)
    return Decision("allow", rule.index, f"{why}: allow block matched")


# ---------------------------------------------------------------------------------------------
# compilation


def _compile_named_networks(entries: Iterable[Any],
                            problems: list[ConfigProblem]) -> dict[str, tuple[Network, ...]]:
    named: dict[str, tuple[Network, ...]] = {}
    for i, entry in enumerate(entries):
        where = f"access_control.networks[{i}]"
        name = getattr(entry, "name", None)
        if not isinstance(name, str) or not name:
            problems.append(ConfigProblem(f"{where}.name", "a network needs a name"))
            continue
        if name in named:
            problems.append(ConfigProblem(f"{where}.name", f"{name!r} is defined twice"))
        nets = []
        for value in getattr(entry, "networks", ()):
            try:
                nets.append(ipaddress.ip_network(str(value), strict=False))
            except ValueError:
                problems.append(ConfigProblem(f"{where}.networks",
                                              f"{value!r} is not a CIDR network"))
        named[name] = tuple(nets)
    return named


def claim_names(access_control: AccessControlSettings) -> frozenset[str]:
    """The top-level claim names the ``claim/<name>[/…]`` criteria of the rules' blocks read
    (``claim/org/team`` reads ``org``): what a session must keep for the rules to see them.
    Malformed rules are walked as far as they go (compiling them reports the problems)."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if isinstance(key, str) and key.startswith("claim/"):
                    first = key[6:].split("/", 1)[0]
                    if first:
                        names.add(first)
                else:
                    walk(value)
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item)

    for rule in access_control.rules:
        for block in ("allow", "deny"):
            walk(getattr(rule, block, None))
    return frozenset(names)


def _needs_question_mark(pattern: str, flags: int = 0) -> bool:
    """Whether every match of ``pattern`` contains a ``?`` looked for as the start of a
    query string: a literal ``?`` (``\\?``, ``[?]``) or a class with ``?`` but no ``/``
    (``[?&]``). Authelia's ``^/api([/?].*)?$`` and ``[^?]`` work on paths: no. Anything the
    parser does not show plainly counts as no (this only decides a warning)."""
    try:
        parsed = _sre_parse.parse(pattern, flags)
    except (re.error, RecursionError, ValueError, TypeError):
        return False
    try:
        return _requires_query_mark(list(parsed.data))
    except (RecursionError, ValueError, TypeError, IndexError):
        return False


def _requires_query_mark(items: Sequence[Any]) -> bool:
    """Over a parsed sequence: some element always matches a query-looking ``?``."""
    return any(_element_requires(op, av) for op, av in items)


def _element_requires(op: Any, av: Any) -> bool:
    name = getattr(op, "name", str(op))
    question, slash = ord("?"), ord("/")
    if name == "LITERAL":
        return bool(av == question)
    if name == "IN":
        kinds = [getattr(k, "name", str(k)) for k, _ in av]
        if "NEGATE" in kinds or "CATEGORY" in kinds:
            return False

        def has(code: int) -> bool:
            return any((getattr(k, "name", str(k)) == "LITERAL" and v == code)
                       or (getattr(k, "name", str(k)) == "RANGE" and v[0] <= code <= v[1])
                       for k, v in av)

        return has(question) and not has(slash)
    if name == "SUBPATTERN":
        return _requires_query_mark(list(av[-1]))
    if name == "ATOMIC_GROUP":
        return _requires_query_mark(list(av))
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        low, _high, body = av
        return bool(low >= 1) and _requires_query_mark(list(body))
    if name == "BRANCH":
        _, branches = av
        return all(_requires_query_mark(list(b)) for b in branches)
    if name == "ASSERT":
        return _requires_query_mark(list(av[1]))
    return False


def _render(rule: AccessRule) -> str:
    """A short one-line rendering of a rule's set fields (``resources = ["^/x"], ...``)."""
    parts = []
    for name in _RULE_FIELDS:
        value = getattr(rule, name, None)
        if not value and value is not False:
            continue
        parts.append(f"{name} = {json.dumps(value, ensure_ascii=False)}")
    text = ", ".join(parts)
    return text if len(text) <= 200 else text[:199] + "…"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


_CRITERIA = ("accept", "reject", "authenticated_user", "email", "domain", "user", "groups",
             "http_method", "http_path", "source_ip", "cors_preflight", "client_certificate",
             "day_of_week",
             "time_of_day")
_OPERATORS = ("and", "or", "not", "nor")
_STRING_MATCHERS = ("is", "in", "starts_with", "ends_with", "contains")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_QUERY_OPERATORS = ("equal", "not equal", "present", "absent", "pattern", "not pattern")


class _Invalid(Exception):
    """A problem inside a rule: ``where`` is relative to the rule."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


@dataclass
class _Compiler:
    index: int
    named: Mapping[str, tuple[Network, ...]]
    problems: list[ConfigProblem]
    _ok: bool = field(default=True)

    def problem(self, where: str, message: str) -> None:
        self._ok = False
        self.problems.append(ConfigProblem(f"access_control.rules[{self.index}].{where}",
                                           message))

    def rule(self, rule: AccessRule) -> _Rule | None:
        out = _Rule(index=self.index, policy=rule.policy, text=_render(rule))
        extra = set(getattr(rule, "__dict__", {})) - set(_RULE_FIELDS)
        for name in sorted(extra):
            self.problem(name, "unknown field" + _did_you_mean(name, _RULE_FIELDS))
        self._policy(rule, out)
        self._domains(rule, out)
        out.resources = tuple(self._regexes("resources", rule.resources, search=True))
        out.query_like = tuple(j for j, r in enumerate(out.resources)
                               if _needs_question_mark(r.pattern, r.flags))
        self._methods(rule, out)
        if rule.networks:
            out.networks = self._networks("networks", rule.networks)
            out.net_ranges = tuple((n.version, int(n.network_address),
                                    int(n.broadcast_address)) for n in out.networks)
        self._subject(rule, out)
        self._subject_mismatch(rule, out)
        self._query(rule, out)
        for block in ("allow", "deny"):
            body = getattr(rule, block)
            if body is None:
                continue
            out.has_ppl = True
            try:
                setattr(out, block, self._block(block, body, grants=block == "allow"))
            except _Invalid as exc:
                self.problem(exc.where, exc.message)
        return out if self._ok else None

    def _policy(self, rule: AccessRule, out: _Rule) -> None:
        if rule.policy is not None and rule.policy not in POLICIES:
            self.problem("policy", f"{rule.policy!r} is not one of {', '.join(POLICIES)}"
                         + _did_you_mean(str(rule.policy), POLICIES))
        if rule.policy is None and rule.allow is None and rule.deny is None:
            self.problem("policy", "a rule needs a policy, or allow/deny blocks")
        if rule.policy == "bypass" and rule.subject:
            self.problem("subject", "a 'bypass' rule cannot have a subject")
        if rule.policy == "bypass" and (rule.allow is not None or rule.deny is not None):
            self.problem("policy", "a 'bypass' rule cannot have allow/deny blocks")

    def _domains(self, rule: AccessRule, out: _Rule) -> None:
        exact, wild = set(), []
        for value in _as_list(rule.domain):
            host = str(value).strip().lower().rstrip(".")
            if host.startswith("*."):
                suffix = host[1:]
                if "*" in suffix or len(suffix) < 2:
                    self.problem("domain", f"{value!r} is not a host name or '*.' wildcard")
                wild.append(suffix)
            elif not host or host[0] == "." or "*" in host or "/" in host:
                self.problem("domain", f"{value!r} is not a host name or '*.' wildcard")
            else:
                exact.add(_host_of(host))
        out.exact = frozenset(exact)
        out.wildcards = tuple(wild)
        out.host_regex = tuple(self._regexes("domain_regex", rule.domain_regex, search=False,
                                             flags=re.IGNORECASE))

    def _regexes(self, where: str, values: Any, *, search: bool,
                 flags: int = 0) -> list[re.Pattern[str]]:
        out = []
        for j, value in enumerate(_as_list(values)):
            if not isinstance(value, str):
                self.problem(f"{where}[{j}]", f"{value!r} is not a regular expression")
                continue
            try:
                out.append(re.compile(value, flags))
            except re.error as exc:
                self.problem(f"{where}[{j}]", f"invalid regular expression {value!r}: {exc}")
        return out

    def _methods(self, rule: AccessRule, out: _Rule) -> None:
        if not rule.methods:
            return
        methods = set()
        for value in _as_list(rule.methods):
            method = str(value).upper()
            if method not in METHODS:
                self.problem("methods", f"{value!r} is not an HTTP method"
                             + _did_you_mean(method, METHODS))
            methods.add(method)
        if "GET" in methods:        # HEAD runs the GET handler (RFC 9110 §9.3.2)
            methods.add("HEAD")
        out.methods = frozenset(methods)

    def _networks(self, where: str, values: Any) -> tuple[Network, ...]:
        nets: list[Network] = []
        for value in _as_list(values):
            text = str(value)
            if text in self.named:
                nets.extend(self.named[text])
                continue
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                self.problem(where, f"{text!r} is neither a CIDR network nor the name of an "
                             "access_control.networks entry" + _did_you_mean(text, self.named))
        return tuple(nets)

    def _subject(self, rule: AccessRule, out: _Rule) -> None:
        value: Any = rule.subject
        if not value:
            return
        groups = [[value]] if isinstance(value, str) else value
        compiled = []
        for group in _as_list(groups):
            items = [group] if isinstance(group, str) else _as_list(group)
            terms = []
            for item in items:
                kind, sep, name = str(item).partition(":")
                if not sep or kind not in ("user", "group", "email") or not name:
                    self.problem("subject", f"{item!r} must be 'user:…', 'group:…' or "
                                 "'email:…'")
                    continue
                terms.append((kind, _fold(name) if kind == "email" else name))
            if terms:
                compiled.append(tuple(terms))
        out.subject = tuple(compiled)

    def _subject_mismatch(self, rule: AccessRule, out: _Rule) -> None:
        value = getattr(rule, "subject_mismatch", None)
        if value is None:
            return
        if value not in ("deny", "continue"):
            self.problem("subject_mismatch", f"{value!r} is not one of deny, continue"
                         + _did_you_mean(str(value), ("deny", "continue")))
        elif not rule.subject:
            self.problem("subject_mismatch", "the rule has no subject")
        elif rule.policy == "deny" and value == "deny":
            self.problem("subject_mismatch", "a 'deny' rule with a subject concerns only its "
                         "subjects: others always continue to the next rules")
        out.mismatch_continue = value == "continue"

    def _query(self, rule: AccessRule, out: _Rule) -> None:
        if not rule.query:
            return
        items = _as_list(rule.query)
        groups = items if all(isinstance(g, list | tuple) for g in items) else [items]
        compiled = []
        for g, group in enumerate(groups):
            conds = []
            for j, cond in enumerate(_as_list(group)):
                where = f"query[{g}][{j}]" if groups is items else f"query[{j}]"
                q = self._query_item(where, cond)
                if q is not None:
                    conds.append(q)
            compiled.append(tuple(conds))
        out.query = tuple(compiled)
        out.query_keys = frozenset(q.key for group in compiled for q in group
                                   if q.operator in _VALUE_OPERATORS)

    def _query_item(self, where: str, cond: Any) -> _Query | None:
        if not isinstance(cond, Mapping):
            self.problem(where, "expected a table {key, value?, operator?}")
            return None
        unknown = set(cond) - {"key", "value", "operator"}
        for name in sorted(unknown):
            self.problem(f"{where}.{name}", "unknown field"
                         + _did_you_mean(str(name), ("key", "value", "operator")))
        key, value = cond.get("key"), cond.get("value")
        if not isinstance(key, str) or not key:
            self.problem(f"{where}.key", "a query condition needs a key")
            return None
        op = cond.get("operator", "equal" if value is not None else "present")
        if op not in _QUERY_OPERATORS:
            self.problem(f"{where}.operator", f"{op!r} is not one of "
                         f"{', '.join(_QUERY_OPERATORS)}" + _did_you_mean(str(op),
                                                                         _QUERY_OPERATORS))
            return None
        needs_value = op not in ("present", "absent")
        if needs_value and not isinstance(value, str):
            self.problem(f"{where}.value", f"operator {op!r} needs a string value")
            return None
        if not needs_value and value is not None:
            self.problem(f"{where}.value", f"operator {op!r} takes no value")
            return None
        pattern = None
        if op in ("pattern", "not pattern"):
            try:
                pattern = re.compile(str(value))
            except re.error as exc:
                self.problem(f"{where}.value", f"invalid regular expression {value!r}: {exc}")
                return None
        return _Query(key, op, value, pattern)

    # -- Pomerium-style blocks ---------------------------------------------------------

    # ``grants``: the polarity of what is being compiled. True where a criterion holding can
    # only admit (an allow block), False where it can only refuse (a deny block); ``not`` and
    # ``nor`` flip it. Email criteria read the claimed email only where they refuse.

    def _block(self, where: str, body: Any, *, grants: bool) -> Pred:
        if not isinstance(body, Mapping) or not body:
            raise _Invalid(where, "expected a table of and/or/not/nor lists")
        preds = []
        for op, items in body.items():
            preds.append(self._operator(f"{where}.{op}", str(op), items, grants=grants))
        return preds[0] if len(preds) == 1 else _tri_and(preds)

    def _operator(self, where: str, op: str, items: Any, *, grants: bool) -> Pred:
        if op not in _OPERATORS:
            raise _Invalid(where, f"unknown operator {op!r}" + _did_you_mean(op, _OPERATORS))
        if not isinstance(items, list | tuple) or not items:
            raise _Invalid(where, "expected a non-empty list of criteria")
        inner = grants if op in ("and", "or") else not grants
        preds = [self._item(f"{where}[{k}]", item, grants=inner)
                 for k, item in enumerate(items)]
        if op == "and":
            return _tri_and(preds)
        if op == "or":
            return _tri_or(preds)
        negated = [_tri_not(p) for p in preds]
        return _tri_and(negated) if op == "not" else _tri_or(negated)

    def _item(self, where: str, item: Any, *, grants: bool) -> Pred:
        if not isinstance(item, Mapping) or len(item) != 1:
            raise _Invalid(where, "each item is a table with exactly one criterion")
        (name, value), = item.items()
        name = str(name)
        sub = f"{where}.{name}"
        if name in _OPERATORS:
            return self._operator(sub, name, value, grants=grants)
        if name.startswith("claim/"):
            return _claim(sub, name[6:], value)
        if name not in _CRITERIA:
            raise _Invalid(sub, f"unknown criterion {name!r}"
                           + _did_you_mean(name, (*_CRITERIA, *_OPERATORS, "claim/")))
        return self._criterion(sub, name, value, grants=grants)

    def _criterion(self, where: str, name: str, value: Any, *, grants: bool) -> Pred:
        if name in ("accept", "reject", "authenticated_user", "cors_preflight"):
            if value is not True:
                raise _Invalid(where, f"{name} takes the value true")
            return _FLAGS[name]
        if name == "source_ip":
            nets = self._networks(where, value)
            return lambda ctx: _in_networks(ctx, nets)
        if name == "client_certificate":
            return _client_certificate(where, value)
        if name == "groups":
            return _groups(where, value)
        if name == "day_of_week":
            return _day_of_week(where, value)
        if name == "time_of_day":
            return _time_of_day(where, value)
        fold = name in ("email", "domain", "http_method")
        test = _string_matcher(where, value, fold=fold)
        getter = _GETTERS[name]
        if name == "http_method":
            # HEAD is GET without the body: it matches whatever GET matches.
            return lambda ctx: test(ctx.view.method) or (
                ctx.view.method == "HEAD" and test("GET"))
        if name == "http_path":
            return lambda ctx: test(getter(ctx))

        verified = grants and name in ("email", "domain")

        def identity_test(ctx: _Ctx) -> Tri:
            if ctx.identity is None:
                return None
            if verified and not ctx.identity.email_verified:
                return False          # an unverified email could be anyone's: no grant
            return test(getter(ctx))

        return identity_test


def _tri_and(preds: Sequence[Pred]) -> Pred:
    def both(ctx: _Ctx) -> Tri:
        unknown = False
        for p in preds:
            v = p(ctx)
            if v is False:
                return False
            if v is None:
                unknown = True
        return None if unknown else True
    return both


def _tri_or(preds: Sequence[Pred]) -> Pred:
    def either(ctx: _Ctx) -> Tri:
        unknown = False
        for p in preds:
            v = p(ctx)
            if v is True:
                return True
            if v is None:
                unknown = True
        return None if unknown else False
    return either


def _tri_not(pred: Pred) -> Pred:
    def negated(ctx: _Ctx) -> Tri:
        v = pred(ctx)
        return None if v is None else not v
    return negated


def _client_certificate(where: str, value: Any) -> Pred:
    """``client_certificate: {fingerprint: …}`` (SHA-256 of the certificate, hex, colons
    allowed) or ``{spki_hash: …}`` (SHA-256 of its SubjectPublicKeyInfo, base64); each a
    string or a list. The certificate is the one TLS or a trusted proxy presented."""
    if not isinstance(value, dict) or not value or not set(value) <= {"fingerprint",
                                                                     "spki_hash"}:
        raise _Invalid(where, "client_certificate takes {fingerprint: …} or {spki_hash: …}")
    fingerprints: set[str] = set()
    spki: set[str] = set()
    for kind, wanted in value.items():
        items = wanted if isinstance(wanted, list) else [wanted]
        if not items or not all(isinstance(i, str) and i for i in items):
            raise _Invalid(f"{where}.{kind}", "must be a string or a list of strings")
        if kind == "fingerprint":
            for item in items:
                text = item.replace(":", "").lower()
                if not re.fullmatch(r"[0-9a-f]{64}", text):
                    raise _Invalid(f"{where}.fingerprint", f"{item!r} is not a SHA-256 in hex")
                fingerprints.add(text)
        else:
            spki.update(items)

    def matches(ctx: _Ctx) -> Tri:
        der = ctx.view.client_cert
        if der is None:
            return False
        if fingerprints and hashlib.sha256(der).hexdigest() in fingerprints:
            return True
        if spki:
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import (
                Encoding,
                PublicFormat,
            )

            try:
                key = x509.load_der_x509_certificate(der).public_key().public_bytes(
                    Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            except ValueError:
                return False
            return base64.b64encode(hashlib.sha256(key).digest()).decode() in spki
        return False

    return matches


def _cors_preflight(ctx: _Ctx) -> Tri:
    h = ctx.view.headers
    return (ctx.view.method == "OPTIONS" and "origin" in h
            and "access-control-request-method" in h)


_FLAGS: dict[str, Pred] = {
    "accept": lambda ctx: True,
    "reject": lambda ctx: False,
    "authenticated_user": lambda ctx: True if ctx.identity is not None else None,
    "cors_preflight": _cors_preflight,
}


def _email_domain(ctx: _Ctx) -> str:
    assert ctx.identity is not None
    return ctx.identity.email.rpartition("@")[2] if "@" in ctx.identity.email else ""


_GETTERS: dict[str, Callable[[_Ctx], str]] = {
    "email": lambda ctx: ctx.identity.email if ctx.identity else "",
    "domain": _email_domain,
    "user": lambda ctx: ctx.identity.sub if ctx.identity else "",
    "http_method": lambda ctx: ctx.view.method,
    "http_path": lambda ctx: ctx.path,
}


def _string_matcher(where: str, value: Any, *, fold: bool) -> Callable[[str], bool]:
    spec = {"is": value} if isinstance(value, str) else value
    if not isinstance(spec, Mapping) or not spec:
        raise _Invalid(where, "expected a string or a table of "
                              f"{', '.join(_STRING_MATCHERS)}")
    tests: list[Callable[[str], bool]] = []
    for key, arg in spec.items():
        if key not in _STRING_MATCHERS:
            raise _Invalid(f"{where}.{key}", f"unknown matcher {key!r}"
                           + _did_you_mean(str(key), _STRING_MATCHERS))
        if key == "in":
            if not isinstance(arg, list | tuple) or not all(isinstance(a, str) for a in arg):
                raise _Invalid(f"{where}.in", "expected a list of strings")
            options = frozenset(_fold(a) if fold else a for a in arg)
            tests.append(lambda s, o=options: s in o)  # type: ignore[misc]
            continue
        if not isinstance(arg, str):
            raise _Invalid(f"{where}.{key}", "expected a string")
        a = _fold(arg) if fold else arg
        if key == "is":
            tests.append(lambda s, a=a: s == a)  # type: ignore[misc]
        elif key == "starts_with":
            tests.append(lambda s, a=a: s.startswith(a))  # type: ignore[misc]
        elif key == "ends_with":
            tests.append(lambda s, a=a: s.endswith(a))  # type: ignore[misc]
        else:
            tests.append(lambda s, a=a: a in s)  # type: ignore[misc]

    def match(s: str) -> bool:
        if fold:
            s = _fold(s)
        return all(t(s) for t in tests)

    return match


def _groups(where: str, value: Any) -> Pred:
    spec = {"has": value} if isinstance(value, str) else value
    if not isinstance(spec, Mapping) or not spec:
        raise _Invalid(where, "expected a group name or a table of has/exclude")
    has: list[str] = []
    exclude: list[str] = []
    for key, arg in spec.items():
        if key not in ("has", "exclude"):
            raise _Invalid(f"{where}.{key}", f"unknown matcher {key!r}"
                           + _did_you_mean(str(key), ("has", "exclude")))
        if not isinstance(arg, str):
            raise _Invalid(f"{where}.{key}", "expected a group name")
        (has if key == "has" else exclude).append(arg)

    def test(ctx: _Ctx) -> Tri:
        if ctx.identity is None:
            return None
        groups = ctx.identity.groups
        return all(g in groups for g in has) and not any(g in groups for g in exclude)

    return test


def _claim(where: str, path: str, value: Any) -> Pred:
    names = path.split("/")
    if not all(names):
        raise _Invalid(where, "a claim criterion is 'claim/<name>[/<name>...]'")
    wanted = _as_list(value)
    if not wanted or not all(isinstance(w, str | int | float | bool) for w in wanted):
        raise _Invalid(where, "expected a value or a list of values")

    def test(ctx: _Ctx) -> Tri:
        if ctx.identity is None:
            return None
        node: Any = ctx.identity.claims
        for name in names:
            if not isinstance(node, Mapping) or name not in node:
                return False
            node = node[name]
        have = node if isinstance(node, list | tuple) else [node]
        return any(_same(h, w) for h in have for w in wanted)

    return test


def _same(have: Any, want: Any) -> bool:
    # True == 1 in Python; a claim typed differently from the value does not match
    return type(have) is type(want) and bool(have == want)


def _zone(where: str, spec: Mapping[str, Any]) -> tzinfo:
    name = spec.get("timezone", "UTC")
    if not isinstance(name, str):
        raise _Invalid(f"{where}.timezone", "expected a time zone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _Invalid(f"{where}.timezone", f"unknown time zone {name!r}") from None


def _day_of_week(where: str, value: Any) -> Pred:
    spec = value if isinstance(value, Mapping) else {"is": value}
    for key in spec:
        if key not in ("is", "timezone"):
            raise _Invalid(f"{where}.{key}", f"unknown field {key!r}")
    zone = _zone(where, spec)
    days: set[int] = set()
    raw = spec.get("is")
    parts = raw.split(",") if isinstance(raw, str) else _as_list(raw)
    if not parts:
        raise _Invalid(where, "expected days such as 'mon-fri' or 'sat,sun'")
    for part in parts:
        first, sep, last = str(part).strip().lower().partition("-")
        if first not in _DAYS or (sep and last not in _DAYS):
            raise _Invalid(where, f"{part!r} is not a day or range of days (mon, tue, ...)")
        k, end = _DAYS.index(first), _DAYS.index(last if sep else first)
        days.add(k)
        while k != end:   # a range may wrap: "fri-mon"
            k = (k + 1) % 7
            days.add(k)

    def test(ctx: _Ctx) -> Tri:
        return ctx.now().astimezone(zone).weekday() in days

    return test


def _clock(where: str, value: Any) -> time:
    if not isinstance(value, str) or not re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", value):
        raise _Invalid(where, "expected a time such as '08:00'")
    try:
        return time.fromisoformat(value if len(value.split(":")[0]) == 2 else "0" + value)
    except ValueError:
        raise _Invalid(where, f"{value!r} is not a time of day") from None


def _time_of_day(where: str, value: Any) -> Pred:
    if not isinstance(value, Mapping):
        raise _Invalid(where, "expected a table {after, before, timezone}")
    for key in value:
        if key not in ("after", "before", "timezone"):
            raise _Invalid(f"{where}.{key}", f"unknown field {key!r}"
                           + _did_you_mean(str(key), ("after", "before", "timezone")))
    if "after" not in value and "before" not in value:
        raise _Invalid(where, "give after, before or both")
    zone = _zone(where, value)
    after = _clock(f"{where}.after", value["after"]) if "after" in value else time.min
    before = _clock(f"{where}.before", value["before"]) if "before" in value else None

    def test(ctx: _Ctx) -> Tri:
        now = ctx.now().astimezone(zone).time().replace(tzinfo=None)
        if before is None:
            return now >= after
        if after <= before:
            return after <= now < before
        return now >= after or now < before   # wraps past midnight

    return test
