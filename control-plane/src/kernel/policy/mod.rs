//! # Policy engine
//!
//! Every API call is an *action* `<kind>.<verb>` (`wallet.sign`,
//! `secret.delete`, `key.rotate`, ...) on a *resource* `<kind>:<name>`
//! (`wallet:treasury-hot`, `secret:production/payments/stripe`, ...).
//! A policy is an ordered list of [`Rule`]s; an organisation has an ordered
//! list of policies. This module is pure: no I/O and no clock (the request
//! time is part of [`RequestFacts`]).
//!
//! ## Matching
//!
//! ## Facts
//!
//! A request is described by [`RequestFacts`]: action, resource, client
//! address, time, and for signing requests what is really signed: the
//! payload kind (`transaction`, `message`, `digest`) and the *movements* of
//! value it makes ([`ValueFacts`]). Each movement has an asset (`native`, or
//! a token contract), an amount in that asset's base units and a
//! destination (recipient, or spender of an approval); any of them may be
//! unknown. A structured transaction whose payload the control plane built
//! and understood has known movements; a message, a bare digest, or a
//! transaction whose calldata is not understood has *unknown* value facts;
//! requests that move nothing by their nature (transit, secrets, keys,
//! resharing) have value facts that are *not applicable*.
//!
//! ## Matching, and unknown facts
//!
//! Every condition is evaluated to true, false or **unknown** (a fact it
//! needs is unknown). A rule *matches* a request when its `action` glob
//! matches the request action (`*`, `wallet.*`, `*.delete`, `wallet.sign`,
//! see [`glob_match`]), its `resource` glob matches the request resource
//! (`*` matches any run of characters including `/`, `?` exactly one
//! character), and its conditions allow it, **failing closed**:
//! * an `allow` or `require_approval` rule matches only when every condition
//!   is *true*: a condition that cannot be evaluated never lets a request
//!   through;
//! * a `deny` rule matches unless some condition is *false*: a deny whose
//!   condition cannot be evaluated (unknown destination, unknown amount)
//!   matches.
//!
//! The conditions:
//! * `maxAmount`: every movement's asset is in the rule's asset scope (the
//!   `assets` condition when present, else only `native`) and the total per
//!   asset is at most `maxAmount` base units, compared as decimal integers
//!   of any length (no floating point). A movement of another asset makes
//!   it false (a limit written for ether does not let a token through);
//!   an unknown asset or amount makes it unknown, unless a known total
//!   already exceeds the limit;
//! * `minAmount`: the total of some in-scope asset is at least `minAmount`
//!   (for caps such as "deny any transfer of 1,000 ETH or more");
//! * `assets`: the movements' assets are listed (`native` or a contract,
//!   case-insensitive);
//! * `destinations`: the movements' destinations are listed
//!   (case-insensitive);
//!
//!   for `assets` and `destinations` a permissive rule needs *every*
//!   movement listed (each movement must be allowed) and a deny needs
//!   *some* movement listed (one forbidden movement is enough);
//! * `payloadKinds`: the request signs one of the listed kinds
//!   (`transaction`, `message`, `digest`); false for requests that sign
//!   nothing;
//! * `allowedIPs`: the client IP is inside one of the CIDRs or bare
//!   addresses (IPv4-mapped IPv6 addresses such as `::ffff:10.0.0.1` count
//!   as IPv4; an IPv4 address also lies inside an IPv6 CIDR that covers its
//!   mapped form, e.g. `::/0`); unknown when the address is unknown;
//! * `timeWindow`: the request time (UTC, from the Unix time) lies in
//!   `[start, end)` on an allowed day; when `end < start` the window runs
//!   overnight and the day that must be allowed is the day on which the
//!   window *started* (a `fri` window `22:00`-`06:00` covers Friday 22:00
//!   to Saturday 06:00).
//!
//! The value conditions (`maxAmount`, `minAmount`, `assets`,
//! `destinations`) are false for requests whose value facts are not
//! applicable: they restrict a rule to requests that move value.
//!
//! `requireMFA` is *not* a matching condition: it is carried into the
//! decision of the rule that decides.
//!
//! ## Decision
//!
//! Policies are evaluated in the order given, rules within a policy in their
//! order.
//! 1. **Deny wins**: if any matching rule anywhere has effect `deny`, the
//!    decision is [`Decision::Deny`] naming the first such rule.
//! 2. Otherwise the **first matching rule decides**: `allow` gives
//!    [`Decision::Allow`], `require_approval` gives
//!    [`Decision::RequireApproval`] with its approval count, roles and
//!    `requireMFA`.
//! 3. If nothing matched the request is denied (**default deny**):
//!    `Deny { rule: None, reason: "no rule matched" }`.
//!
//! Rules are checked with [`validate_rules`] when they are stored. Should a
//! stored rule nevertheless be invalid (for instance written by an older
//! version), a rule whose action and resource globs match the request and
//! which fails validation is treated as a matching `deny` rule: the engine
//! fails closed.
//!
//! A new organisation gets [`default_rules`]: exports are denied, deletions
//! and key destruction need two approvals, rotations and resharing need one
//! admin approval, everything else (reading, creating, signing) is allowed.

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

mod conditions;
mod validate;

use conditions::rule_applies;
use validate::validate_rule;
pub use validate::validate_rules;

/// Most rules a single policy may hold.
pub const MAX_RULES: usize = 100;
/// Longest resource glob, in bytes.
pub const MAX_RESOURCE_LEN: usize = 256;
/// Longest action glob, in bytes.
pub const MAX_ACTION_LEN: usize = 128;
/// Most digits of a `maxAmount` (2^256 has 78 decimal digits).
pub const MAX_AMOUNT_DIGITS: usize = 78;
/// Most approvals a `require_approval` rule may ask for.
pub const MAX_APPROVALS: u32 = 10;
/// Most entries of a condition list (`allowedIPs`, `destinations`, `days`).
pub const MAX_LIST_LEN: usize = 1000;
/// Longest destination, in characters.
pub const MAX_DESTINATION_LEN: usize = 256;
/// Roles an approval requirement may name.
pub const APPROVAL_ROLES: [&str; 5] = ["admin", "operator", "approver", "service", "auditor"];
/// Day names accepted in a time window, Monday first.
pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// One rule of a policy: `effect` applies to `action` on `resource` when the
/// `conditions` hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = PolicyRule)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Action glob: `*`, `<kind>.<verb>`, `<kind>.*` or `*.<verb>`, or a
    /// verb alone, which takes the resource's kind.
    #[schema(
        pattern = r"^(\*|(\*|[a-z0-9_-]+)\.(\*|[a-z0-9_-]+)|[a-z0-9_-]+)$",
        max_length = 128
    )]
    pub action: String,
    /// Resource glob over `<kind>:<name>`, e.g. `wallet:*`.
    #[schema(pattern = r"^[A-Za-z0-9_./:*?-]+$", max_length = 256)]
    pub resource: String,
    /// Extra conditions; `None` means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = inline_schema::<Conditions>)]
    pub conditions: Option<Conditions>,
    /// What happens when the rule matches; `allow` when not given (the
    /// seed SDKs' rules name no effect).
    #[serde(default = "allow")]
    #[schema(schema_with = inline_schema::<Effect>)]
    pub effect: Effect,
    /// Approvals needed; present iff `effect` is `require_approval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = inline_schema::<ApprovalRequirement>)]
    pub approvals: Option<ApprovalRequirement>,
}

/// Conditions of a rule. All but `requireMFA` must hold for the rule to match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Conditions {
    /// Largest amount, decimal in base units (up to 78 digits). A JSON
    /// number is accepted too when it is a safe integer (below 2^53).
    #[serde(
        default,
        deserialize_with = "amount",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(schema_with = amount_schema)]
    pub max_amount: Option<String>,
    /// Client addresses allowed: CIDRs or bare addresses, IPv4 or IPv6.
    #[serde(
        default,
        rename = "allowedIPs",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(min_items = 1, max_items = 1000)]
    pub allowed_ips: Option<Vec<String>>,
    /// Whether the caller (and approvers) must have passed MFA; carried into
    /// the decision, not a matching condition.
    #[serde(
        default,
        rename = "requireMFA",
        skip_serializing_if = "Option::is_none"
    )]
    pub require_mfa: Option<bool>,
    /// UTC time window in which the rule applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = inline_schema::<TimeWindow>)]
    pub time_window: Option<TimeWindow>,
    /// Destinations allowed (compared case-insensitively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 1000)]
    pub destinations: Option<Vec<String>>,
    /// Smallest total amount, decimal in base units: the condition holds
    /// when some in-scope asset moves at least this much. A JSON number is
    /// accepted as for `maxAmount`.
    #[serde(
        default,
        deserialize_with = "amount",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(schema_with = amount_schema)]
    pub min_amount: Option<String>,
    /// Assets allowed (`native` or a token contract, compared
    /// case-insensitively); also the scope of `maxAmount` and `minAmount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 1000)]
    pub assets: Option<Vec<String>>,
    /// Payload kinds the rule applies to: `transaction`, `message`, `digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = payload_kinds_schema)]
    pub payload_kinds: Option<Vec<String>>,
}

/// The OpenAPI schema of `maxAmount` and `minAmount` ([`amount`]): decimal
/// base units as a string, or a whole JSON number below 2^53.
/// `roles` of an approval requirement: one or more of [`APPROVAL_ROLES`].
fn approval_roles_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    schema_from(serde_json::json!({
        "type": "array", "minItems": 1, "maxItems": MAX_LIST_LEN, "uniqueItems": true,
        "items": {"type": "string", "enum": APPROVAL_ROLES},
    }))
}

fn amount_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    schema_from(serde_json::json!({
        "oneOf": [
            {"type": "string", "pattern": "^[0-9]{1,78}$"},
            {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER},
            {"type": "null"},
        ],
        "description": "Decimal base units as a string (up to 78 digits), or a whole JSON \
            number from 0 to 2^53 - 1",
    }))
}

/// The OpenAPI schema of `payloadKinds` ([`PAYLOAD_KINDS`]).
fn payload_kinds_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    schema_from(serde_json::json!({
        "type": ["array", "null"],
        "items": {"type": "string", "enum": PAYLOAD_KINDS},
        "description": "Payload kinds the rule applies to",
    }))
}

/// `T`'s OpenAPI schema written out where a rule uses it (as the rule's
/// parts have no names of their own in the document), without `null`.
fn inline_schema<T: utoipa::PartialSchema>(
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    T::schema()
}

/// A schema written as JSON (the kernel does not name the HTTP layer's
/// helper of the same name).
// A JSON literal of this file: a wrong one is a programming error that the
// OpenAPI document's unit test (`http::openapi::tests`) meets at once.
#[allow(clippy::expect_used)]
fn schema_from(
    value: serde_json::Value,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    serde_json::from_value(value).expect("a valid schema literal")
}

/// The effect of a rule that names none.
fn allow() -> Effect {
    Effect::Allow
}

/// The largest integer a JSON number carries exactly (2^53 - 1): an amount
/// sent as a number above it may already have been rounded by the client.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// An amount: a decimal string, or a JSON number that is a safe integer
/// (`0 ..= 2^53 - 1`). Fractions, negatives and larger numbers are refused
/// (send the amount in base units, as a string when it is large).
fn amount<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Amount {
        Text(String),
        Number(serde_json::Number),
    }
    match Option::<Amount>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Amount::Text(text)) => Ok(Some(text)),
        Some(Amount::Number(number)) => match number.as_u64() {
            Some(value) if value <= MAX_SAFE_INTEGER => Ok(Some(value.to_string())),
            _ => Err(serde::de::Error::custom(
                "an amount given as a number must be a whole number from 0 to 2^53 - 1 \
                 (send larger amounts as a decimal string of base units)",
            )),
        },
    }
}

/// Gives actions without a kind the kind of their resource, as the seed
/// SDKs write rules (`{action: "sign", resource: "key:treasury-*"}` is
/// `key.sign`): an action with no `.` other than `*` becomes
/// `<kind>.<action>` when the resource names one kind (`key:…`), and
/// `*.<action>` when it does not (`*`, `k*:…`). Stored rules are the
/// normalised ones, so what a policy shows is what it decides.
pub fn normalize_rules(rules: &mut [Rule]) {
    for rule in rules {
        if rule.action == "*" || rule.action.contains('.') {
            continue;
        }
        let kind = rule
            .resource
            .split_once(':')
            .map(|(kind, _)| kind)
            .filter(|kind| !kind.is_empty() && !kind.contains(['*', '?']))
            .unwrap_or("*");
        rule.action = format!("{kind}.{}", rule.action);
    }
}

/// A daily UTC time window `[start, end)`, optionally restricted to some days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeWindow {
    /// Days on which the window opens (`mon`..`sun`); `None` means every day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 1000)]
    pub days: Option<Vec<String>>,
    /// Opening time, `HH:MM` UTC.
    #[schema(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub start: String,
    /// Closing time, `HH:MM` UTC, exclusive; earlier than `start` means the
    /// window runs overnight.
    #[schema(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub end: String,
}

/// Effect of a matching rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// The action is allowed.
    Allow,
    /// The action is denied; a matching deny rule wins over everything else.
    Deny,
    /// The action needs approvals first.
    RequireApproval,
}

/// How many approvals a `require_approval` rule needs and from which roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalRequirement {
    /// Number of distinct approvals needed (1 to 10).
    #[schema(minimum = 1, maximum = 10)]
    pub count: u32,
    /// Roles whose holders may approve.
    #[schema(schema_with = approval_roles_schema)]
    pub roles: Vec<String>,
}

/// A policy that cannot be stored. [`PolicyError::code`] is stable; the
/// message names the offending field, e.g.
/// `rules[2].conditions.allowedIPs[0]: invalid CIDR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PolicyError {
    field: String,
    reason: String,
}

impl PolicyError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Stable snake_case error code for API responses: `invalid_policy`.
    pub fn code(&self) -> &'static str {
        "invalid_policy"
    }

    /// Path of the offending field, e.g. `rules[2].conditions.allowedIPs[0]`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with the field.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// The asset name of a chain's own coin (ether, bitcoin, SOL).
pub const NATIVE_ASSET: &str = "native";

/// Payload kinds a `payloadKinds` condition may name.
pub const PAYLOAD_KINDS: [&str; 3] = ["transaction", "message", "digest"];

/// What a signing request signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// A structured transaction the control plane built and hashed itself.
    Transaction,
    /// A message (EIP-191 for ECDSA wallets, raw for Schnorr).
    Message,
    /// A bare digest: nothing about it is known.
    Digest,
}

impl PayloadKind {
    /// The name rules use.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadKind::Transaction => "transaction",
            PayloadKind::Message => "message",
            PayloadKind::Digest => "digest",
        }
    }
}

/// One movement of value: an asset, an amount of it and where it goes. A
/// `None` field is unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Movement {
    /// `native`, or the token contract (an EVM address, lowercase).
    pub asset: Option<String>,
    /// Base units of the asset, decimal.
    pub amount: Option<String>,
    /// The recipient, or the spender of an approval.
    pub destination: Option<String>,
}

/// What a request moves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ValueFacts {
    /// The request moves nothing by its nature (transit, secrets, keys,
    /// resharing): value conditions are false.
    #[default]
    NotApplicable,
    /// It may move value, but what is unknown (a message, a bare digest,
    /// calldata that is not understood).
    Unknown,
    /// Every movement it makes.
    Known(Vec<Movement>),
}

/// The facts about one request that rules are matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    /// Action, `<kind>.<verb>`.
    pub action: String,
    /// Resource, `<kind>:<name>`.
    pub resource: String,
    /// Client address, if known.
    pub ip: Option<IpAddr>,
    /// What the request moves.
    pub value: ValueFacts,
    /// What a signing request signs; `None` for requests that sign nothing.
    pub payload_kind: Option<PayloadKind>,
    /// Request time, Unix seconds (UTC).
    pub unix_seconds: i64,
}

/// Names one rule: the policy it belongs to and its index there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleRef {
    /// Id of the policy.
    pub policy_id: String,
    /// Index of the rule within the policy.
    pub rule_index: usize,
}

/// Outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "effect",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Decision {
    /// The action may proceed.
    Allow {
        /// The rule that allowed it.
        rule: RuleRef,
        /// Whether the caller must have passed MFA.
        require_mfa: bool,
    },
    /// The action is refused.
    Deny {
        /// The deny rule, or `None` when no rule matched (default deny).
        rule: Option<RuleRef>,
        /// Human-readable reason.
        reason: String,
    },
    /// The action may proceed once approved.
    RequireApproval {
        /// The rule that asked for approval.
        rule: RuleRef,
        /// Number of distinct approvals needed.
        count: u32,
        /// Roles whose holders may approve.
        roles: Vec<String>,
        /// Whether the requester and approvers must have passed MFA.
        require_mfa: bool,
    },
}

impl Decision {
    /// The rule that decided, if any (`None` for the default deny).
    pub fn rule(&self) -> Option<&RuleRef> {
        match self {
            Decision::Allow { rule, .. } | Decision::RequireApproval { rule, .. } => Some(rule),
            Decision::Deny { rule, .. } => rule.as_ref(),
        }
    }
}

// ---------------------------------------------------------------------------
// Glob

/// Glob match of `text` against `pattern`: `*` matches any run of characters
/// (including `/` and the empty run), `?` exactly one character, every other
/// character itself. Runs in `O(len(pattern) * len(text))` at worst (no
/// exponential backtracking).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    // Actions and resources are ASCII in practice: match their bytes
    // without allocating (every data-plane call evaluates the policies).
    if pattern.is_ascii() && text.is_ascii() {
        return glob_match_units(pattern.as_bytes(), text.as_bytes(), b'*', b'?');
    }
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    glob_match_units(&pattern, &text, '*', '?')
}

fn glob_match_units<T: PartialEq + Copy>(pattern: &[T], text: &[T], star_unit: T, one: T) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Position of the last `*` seen and the text position it is matched up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(&c) if c == star_unit => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == one || Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last star swallow one more character and retry.
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    while pattern.get(p) == Some(&star_unit) {
        p += 1;
    }
    p == pattern.len()
}

// ---------------------------------------------------------------------------
// Evaluation

/// Evaluates a request against policies given in evaluation order (each a
/// policy id and its rules). See the module documentation for the semantics:
/// deny wins, otherwise the first matching rule decides, otherwise deny.
pub fn evaluate(policies: &[(String, Vec<Rule>)], facts: &RequestFacts) -> Decision {
    let mut first: Option<Decision> = None;
    for (policy_id, rules) in policies {
        for (rule_index, rule) in rules.iter().enumerate() {
            if !glob_match(&rule.action, &facts.action)
                || !glob_match(&rule.resource, &facts.resource)
            {
                continue;
            }
            let rule_ref = || RuleRef {
                policy_id: policy_id.clone(),
                rule_index,
            };
            // Fail closed on a rule that should never have been stored.
            if let Err(err) = validate_rule(rule_index, rule) {
                return Decision::Deny {
                    rule: Some(rule_ref()),
                    reason: format!("invalid rule in policy {policy_id}: {err}"),
                };
            }
            if !rule_applies(rule, facts) {
                continue;
            }
            let conditions = rule.conditions.as_ref();
            let require_mfa = conditions.and_then(|c| c.require_mfa).unwrap_or(false);
            match (rule.effect, &rule.approvals) {
                (Effect::Deny, _) => {
                    return Decision::Deny {
                        rule: Some(rule_ref()),
                        reason: format!("denied by policy {policy_id} rule {rule_index}"),
                    };
                }
                _ if first.is_some() => {}
                (Effect::Allow, _) => {
                    first = Some(Decision::Allow {
                        rule: rule_ref(),
                        require_mfa,
                    });
                }
                (Effect::RequireApproval, Some(approvals)) => {
                    first = Some(Decision::RequireApproval {
                        rule: rule_ref(),
                        count: approvals.count,
                        roles: approvals.roles.clone(),
                        require_mfa,
                    });
                }
                (Effect::RequireApproval, None) => {
                    // Unreachable after validation; fail closed regardless.
                    return Decision::Deny {
                        rule: Some(rule_ref()),
                        reason: format!("invalid rule in policy {policy_id}: missing approvals"),
                    };
                }
            }
        }
    }
    first.unwrap_or_else(|| Decision::Deny {
        rule: None,
        reason: "no rule matched".to_owned(),
    })
}

// ---------------------------------------------------------------------------
// Default policy

/// The default policy of a new organisation, visible and editable, in order:
/// `*.export` denied; `*.delete` and `*.destroy` need 2 approvals from
/// admins or approvers; `key.rotate`, `transit.rotate`, `wallet.reshare`
/// and `wallet.restore` (a share from a backup) need 1 admin approval; so
/// do the changes that could defeat an approval (separation of duties):
/// `policy.create`, `policy.update`, `identity.create`, `identity.update`
/// (a role change, re-enabling), `identity.mfa_reset`, and
/// `wallet.unfreeze`; everything else (reading, creating, signing,
/// freezing) is allowed.
pub fn default_rules() -> Vec<Rule> {
    let rule = |action: &str, effect: Effect, approvals: Option<(u32, &[&str])>| Rule {
        action: action.to_owned(),
        resource: "*".to_owned(),
        conditions: None,
        effect,
        approvals: approvals.map(|(count, roles)| ApprovalRequirement {
            count,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }),
    };
    let two: (u32, &[&str]) = (2, &["admin", "approver"]);
    let one_admin: (u32, &[&str]) = (1, &["admin"]);
    vec![
        rule("*.export", Effect::Deny, None),
        rule("*.delete", Effect::RequireApproval, Some(two)),
        rule("*.destroy", Effect::RequireApproval, Some(two)),
        rule("key.rotate", Effect::RequireApproval, Some(one_admin)),
        rule("transit.rotate", Effect::RequireApproval, Some(one_admin)),
        rule("wallet.reshare", Effect::RequireApproval, Some(one_admin)),
        rule("wallet.restore", Effect::RequireApproval, Some(one_admin)),
        rule("policy.create", Effect::RequireApproval, Some(one_admin)),
        rule("policy.update", Effect::RequireApproval, Some(one_admin)),
        rule("identity.create", Effect::RequireApproval, Some(one_admin)),
        rule("identity.update", Effect::RequireApproval, Some(one_admin)),
        rule(
            "identity.mfa_reset",
            Effect::RequireApproval,
            Some(one_admin),
        ),
        rule("wallet.unfreeze", Effect::RequireApproval, Some(one_admin)),
        rule("*", Effect::Allow, None),
    ]
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests;
