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

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Action glob: `*`, `<kind>.<verb>`, `<kind>.*` or `*.<verb>`.
    pub action: String,
    /// Resource glob over `<kind>:<name>`, e.g. `wallet:*`.
    pub resource: String,
    /// Extra conditions; `None` means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Conditions>,
    /// What happens when the rule matches.
    pub effect: Effect,
    /// Approvals needed; present iff `effect` is `require_approval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<ApprovalRequirement>,
}

/// Conditions of a rule. All but `requireMFA` must hold for the rule to match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Conditions {
    /// Largest amount, decimal in base units (up to 78 digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_amount: Option<String>,
    /// Client addresses allowed: CIDRs or bare addresses, IPv4 or IPv6.
    #[serde(
        default,
        rename = "allowedIPs",
        skip_serializing_if = "Option::is_none"
    )]
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
    pub time_window: Option<TimeWindow>,
    /// Destinations allowed (compared case-insensitively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations: Option<Vec<String>>,
    /// Smallest total amount, decimal in base units: the condition holds
    /// when some in-scope asset moves at least this much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_amount: Option<String>,
    /// Assets allowed (`native` or a token contract, compared
    /// case-insensitively); also the scope of `maxAmount` and `minAmount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assets: Option<Vec<String>>,
    /// Payload kinds the rule applies to: `transaction`, `message`, `digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_kinds: Option<Vec<String>>,
}

/// A daily UTC time window `[start, end)`, optionally restricted to some days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeWindow {
    /// Days on which the window opens (`mon`..`sun`); `None` means every day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<Vec<String>>,
    /// Opening time, `HH:MM` UTC.
    pub start: String,
    /// Closing time, `HH:MM` UTC, exclusive; earlier than `start` means the
    /// window runs overnight.
    pub end: String,
}

/// Effect of a matching rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalRequirement {
    /// Number of distinct approvals needed (1 to 10).
    pub count: u32,
    /// Roles whose holders may approve.
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
// Validation

/// Checks a policy's rules before they are stored: between 1 and
/// [`MAX_RULES`] rules, well-formed action and resource globs, approvals
/// present exactly on `require_approval` rules (1 to 10 approvals from known
/// roles), and well-formed conditions. The first problem found is returned.
pub fn validate_rules(rules: &[Rule]) -> Result<(), PolicyError> {
    if rules.is_empty() {
        return Err(PolicyError::new("rules", "must contain at least one rule"));
    }
    if rules.len() > MAX_RULES {
        return Err(PolicyError::new(
            "rules",
            format!("at most {MAX_RULES} rules are allowed"),
        ));
    }
    rules
        .iter()
        .enumerate()
        .try_for_each(|(index, rule)| validate_rule(index, rule))
}

fn validate_rule(index: usize, rule: &Rule) -> Result<(), PolicyError> {
    let at = |field: &str| format!("rules[{index}].{field}");

    if let Err(reason) = check_action(&rule.action) {
        return Err(PolicyError::new(at("action"), reason));
    }
    if let Err(reason) = check_resource(&rule.resource) {
        return Err(PolicyError::new(at("resource"), reason));
    }

    match (rule.effect, &rule.approvals) {
        (Effect::RequireApproval, None) => {
            return Err(PolicyError::new(
                at("approvals"),
                "required when effect is require_approval",
            ));
        }
        (Effect::RequireApproval, Some(approvals)) => {
            if approvals.count == 0 || approvals.count > MAX_APPROVALS {
                return Err(PolicyError::new(
                    at("approvals.count"),
                    format!("must be between 1 and {MAX_APPROVALS}"),
                ));
            }
            if approvals.roles.is_empty() {
                return Err(PolicyError::new(at("approvals.roles"), "must not be empty"));
            }
            for (i, role) in approvals.roles.iter().enumerate() {
                if !APPROVAL_ROLES.contains(&role.as_str()) {
                    return Err(PolicyError::new(
                        at(&format!("approvals.roles[{i}]")),
                        format!(
                            "unknown role, expected one of {}",
                            APPROVAL_ROLES.join(", ")
                        ),
                    ));
                }
                if approvals.roles.iter().take(i).any(|r| r == role) {
                    return Err(PolicyError::new(
                        at(&format!("approvals.roles[{i}]")),
                        "duplicate role",
                    ));
                }
            }
        }
        (Effect::Allow | Effect::Deny, Some(_)) => {
            return Err(PolicyError::new(
                at("approvals"),
                "only allowed when effect is require_approval",
            ));
        }
        (Effect::Allow | Effect::Deny, None) => {}
    }

    let Some(conditions) = &rule.conditions else {
        return Ok(());
    };
    let at = |field: &str| format!("rules[{index}].conditions.{field}");

    if let Some(max) = &conditions.max_amount {
        if let Err(reason) = check_amount(max) {
            return Err(PolicyError::new(at("maxAmount"), reason));
        }
    }

    if let Some(cidrs) = &conditions.allowed_ips {
        check_list_len(cidrs.len()).map_err(|r| PolicyError::new(at("allowedIPs"), r))?;
        for (i, cidr) in cidrs.iter().enumerate() {
            if parse_cidr(cidr).is_none() {
                return Err(PolicyError::new(
                    at(&format!("allowedIPs[{i}]")),
                    "invalid CIDR",
                ));
            }
        }
    }

    if let Some(window) = &conditions.time_window {
        let start = parse_hhmm(&window.start);
        let end = parse_hhmm(&window.end);
        if start.is_none() {
            return Err(PolicyError::new(
                at("timeWindow.start"),
                "invalid time, expected HH:MM",
            ));
        }
        if end.is_none() {
            return Err(PolicyError::new(
                at("timeWindow.end"),
                "invalid time, expected HH:MM",
            ));
        }
        if start == end {
            return Err(PolicyError::new(
                at("timeWindow.end"),
                "must differ from start",
            ));
        }
        if let Some(days) = &window.days {
            check_list_len(days.len()).map_err(|r| PolicyError::new(at("timeWindow.days"), r))?;
            for (i, day) in days.iter().enumerate() {
                if parse_day(day).is_none() {
                    return Err(PolicyError::new(
                        at(&format!("timeWindow.days[{i}]")),
                        "unknown day, expected one of mon, tue, wed, thu, fri, sat, sun",
                    ));
                }
            }
        }
    }

    if let Some(min) = &conditions.min_amount {
        if let Err(reason) = check_amount(min) {
            return Err(PolicyError::new(at("minAmount"), reason));
        }
    }

    if let Some(assets) = &conditions.assets {
        check_list_len(assets.len()).map_err(|r| PolicyError::new(at("assets"), r))?;
        for (i, asset) in assets.iter().enumerate() {
            if let Err(reason) = check_destination(asset) {
                return Err(PolicyError::new(at(&format!("assets[{i}]")), reason));
            }
        }
    }

    if let Some(kinds) = &conditions.payload_kinds {
        check_list_len(kinds.len()).map_err(|r| PolicyError::new(at("payloadKinds"), r))?;
        for (i, kind) in kinds.iter().enumerate() {
            if !PAYLOAD_KINDS.contains(&kind.as_str()) {
                return Err(PolicyError::new(
                    at(&format!("payloadKinds[{i}]")),
                    "unknown payload kind, expected one of transaction, message, digest",
                ));
            }
        }
    }

    if let Some(destinations) = &conditions.destinations {
        check_list_len(destinations.len()).map_err(|r| PolicyError::new(at("destinations"), r))?;
        for (i, destination) in destinations.iter().enumerate() {
            if let Err(reason) = check_destination(destination) {
                return Err(PolicyError::new(at(&format!("destinations[{i}]")), reason));
            }
        }
    }

    Ok(())
}

fn check_action(action: &str) -> Result<(), &'static str> {
    if action.is_empty() {
        return Err("must not be empty");
    }
    if action.len() > MAX_ACTION_LEN {
        return Err("too long");
    }
    if action == "*" {
        return Ok(());
    }
    let Some((kind, verb)) = action.split_once('.') else {
        return Err("expected *, <kind>.<verb>, <kind>.* or *.<verb>");
    };
    let part_ok = |part: &str| {
        part == "*"
            || (!part.is_empty()
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                }))
    };
    if part_ok(kind) && part_ok(verb) {
        Ok(())
    } else {
        Err("expected *, <kind>.<verb>, <kind>.* or *.<verb> with parts of [a-z0-9_-]")
    }
}

fn check_resource(resource: &str) -> Result<(), &'static str> {
    if resource.is_empty() {
        return Err("must not be empty");
    }
    if resource.len() > MAX_RESOURCE_LEN {
        return Err("too long (at most 256 characters)");
    }
    let ok = resource.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b':' | b'*' | b'?' | b'-')
    });
    if ok {
        Ok(())
    } else {
        Err("invalid character, expected [A-Za-z0-9_./:*?-]")
    }
}

fn check_amount(amount: &str) -> Result<(), &'static str> {
    if amount.is_empty() || !amount.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a decimal integer (digits only)");
    }
    if amount.len() > MAX_AMOUNT_DIGITS {
        return Err("too many digits (at most 78)");
    }
    Ok(())
}

fn check_destination(destination: &str) -> Result<(), &'static str> {
    if destination.is_empty() {
        return Err("must not be empty");
    }
    if destination.chars().count() > MAX_DESTINATION_LEN {
        return Err("too long (at most 256 characters)");
    }
    if destination.trim() != destination || destination.chars().any(char::is_control) {
        return Err("must not contain control characters or surrounding whitespace");
    }
    Ok(())
}

fn check_list_len(len: usize) -> Result<(), String> {
    if len == 0 {
        Err("must not be empty".to_owned())
    } else if len > MAX_LIST_LEN {
        Err(format!("at most {MAX_LIST_LEN} entries are allowed"))
    } else {
        Ok(())
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
// Conditions

/// Compares two decimal integers (ASCII digits, any length, leading zeros
/// allowed). Returns `None` when either is not a decimal integer.
fn compare_decimal(a: &str, b: &str) -> Option<Ordering> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    Some(a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Parses `addr/prefix` or a bare address (a /32 or /128). Host bits below
/// the prefix are ignored.
fn parse_cidr(text: &str) -> Option<Cidr> {
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let net: IpAddr = addr.parse().ok()?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse::<u8>().ok()?
        }
    };
    (prefix <= max).then_some(Cidr { net, prefix })
}

fn v6_contains(net: Ipv6Addr, prefix: u8, ip: Ipv6Addr) -> bool {
    let mask = u128::MAX
        .checked_shl(128u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0);
    u128::from(net) & mask == u128::from(ip) & mask
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        // IPv4-mapped IPv6 addresses are IPv4 addresses.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(u32::from(self.prefix)))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V4(ip)) => v6_contains(net, self.prefix, ip.to_ipv6_mapped()),
            (IpAddr::V6(net), IpAddr::V6(ip)) => v6_contains(net, self.prefix, ip),
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

/// Parses `HH:MM` (00:00 to 23:59) into minutes since midnight.
fn parse_hhmm(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Day name to index, Monday = 0.
fn parse_day(text: &str) -> Option<u8> {
    DAY_NAMES
        .iter()
        .position(|d| *d == text)
        .and_then(|i| u8::try_from(i).ok())
}

/// UTC weekday (Monday = 0) and minute of day of a Unix time.
fn weekday_and_minute(unix_seconds: i64) -> (u8, u32) {
    let days = unix_seconds.div_euclid(86_400);
    let seconds_of_day = unix_seconds.rem_euclid(86_400);
    // 1970-01-01 was a Thursday (index 3).
    let weekday = (days.rem_euclid(7) + 3) % 7;
    (
        u8::try_from(weekday).unwrap_or(0),
        u32::try_from(seconds_of_day / 60).unwrap_or(0),
    )
}

/// Whether the time window holds at `unix_seconds`; `None` if the window is
/// malformed.
fn window_holds(window: &TimeWindow, unix_seconds: i64) -> Option<bool> {
    let start = parse_hhmm(&window.start)?;
    let end = parse_hhmm(&window.end)?;
    let days = match &window.days {
        Some(days) => Some(
            days.iter()
                .map(|d| parse_day(d))
                .collect::<Option<Vec<u8>>>()?,
        ),
        None => None,
    };
    let (weekday, minute) = weekday_and_minute(unix_seconds);
    // The day on which the window that contains `minute` opened.
    let opened_on = if start < end {
        (start <= minute && minute < end).then_some(weekday)
    } else if minute >= start {
        Some(weekday)
    } else if minute < end {
        Some((weekday + 6) % 7)
    } else {
        None
    };
    Some(match (opened_on, days) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(day), Some(days)) => days.contains(&day),
    })
}

fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// The value of a condition: it holds, it does not, or a fact it needs is
/// unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn of(holds: bool) -> Truth {
        if holds {
            Truth::True
        } else {
            Truth::False
        }
    }

    /// Three-valued conjunction: false wins, then unknown.
    fn and(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::False, _) | (_, Truth::False) => Truth::False,
            (Truth::Unknown, _) | (_, Truth::Unknown) => Truth::Unknown,
            (Truth::True, Truth::True) => Truth::True,
        }
    }
}

/// Adds two decimal integers of any length.
fn add_decimal(a: &str, b: &str) -> String {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut digits = Vec::with_capacity(a.len().max(b.len()) + 1);
    let mut carry = 0u8;
    for i in 0..a.len().max(b.len()) {
        let digit = |s: &[u8]| {
            s.len()
                .checked_sub(i + 1)
                .and_then(|at| s.get(at))
                .map_or(0, |c| c.wrapping_sub(b'0'))
        };
        let sum = digit(a) + digit(b) + carry;
        digits.push(b'0' + sum % 10);
        carry = sum / 10;
    }
    if carry > 0 {
        digits.push(b'0' + carry);
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// Whether every element of an iterator of truths holds, three-valued
/// (true for none).
fn all(truths: impl Iterator<Item = Truth>) -> Truth {
    truths.fold(Truth::True, Truth::and)
}

/// Per-asset totals of the in-scope movements.
struct Totals {
    /// (asset, total) of each in-scope asset with known amounts.
    sums: Vec<(String, String)>,
    /// A movement's asset, or an in-scope amount, is unknown.
    unknown: bool,
    /// A movement of an asset outside the scope.
    out_of_scope: bool,
}

fn totals(movements: &[Movement], scope: &[String]) -> Totals {
    let mut totals = Totals {
        sums: Vec::new(),
        unknown: false,
        out_of_scope: false,
    };
    for movement in movements {
        let Some(asset) = &movement.asset else {
            totals.unknown = true;
            continue;
        };
        if !scope.iter().any(|listed| eq_ignore_case(listed, asset)) {
            totals.out_of_scope = true;
            continue;
        }
        let Some(amount) = movement
            .amount
            .as_deref()
            .filter(|amount| compare_decimal(amount, "0").is_some())
        else {
            totals.unknown = true;
            continue;
        };
        match totals
            .sums
            .iter_mut()
            .find(|(seen, _)| eq_ignore_case(seen, asset))
        {
            Some((_, sum)) => *sum = add_decimal(sum, amount),
            None => totals.sums.push((asset.clone(), amount.to_owned())),
        }
    }
    totals
}

fn max_amount_truth(max: &str, scope: &[String], value: &ValueFacts) -> Truth {
    let movements = match value {
        ValueFacts::NotApplicable => return Truth::False,
        ValueFacts::Unknown => return Truth::Unknown,
        ValueFacts::Known(movements) => movements,
    };
    let totals = totals(movements, scope);
    let exceeded = totals
        .sums
        .iter()
        .any(|(_, sum)| compare_decimal(sum, max) == Some(Ordering::Greater));
    if totals.out_of_scope || exceeded {
        // Unknown amounts only add to a total: a total already over the
        // limit is over it whatever they are.
        Truth::False
    } else if totals.unknown {
        Truth::Unknown
    } else {
        Truth::True
    }
}

fn min_amount_truth(min: &str, scope: &[String], value: &ValueFacts) -> Truth {
    let movements = match value {
        ValueFacts::NotApplicable => return Truth::False,
        ValueFacts::Unknown => return Truth::Unknown,
        ValueFacts::Known(movements) => movements,
    };
    let totals = totals(movements, scope);
    let reached = totals
        .sums
        .iter()
        .any(|(_, sum)| compare_decimal(sum, min) != Some(Ordering::Less));
    if reached {
        Truth::True
    } else if totals.unknown {
        Truth::Unknown
    } else {
        Truth::False
    }
}

/// Whether some element of an iterator of truths holds, three-valued
/// (false for none).
fn any(truths: impl Iterator<Item = Truth>) -> Truth {
    truths.fold(Truth::False, |found, truth| match (found, truth) {
        (Truth::True, _) | (_, Truth::True) => Truth::True,
        (Truth::Unknown, _) | (_, Truth::Unknown) => Truth::Unknown,
        (Truth::False, Truth::False) => Truth::False,
    })
}

/// Whether movements' fields (asset or destination) are listed: *every*
/// movement's for a permissive rule (each movement must be allowed),
/// *some* movement's for a deny (one forbidden movement is enough).
fn listed_truth(
    list: &[String],
    value: &ValueFacts,
    effect: Effect,
    field: impl Fn(&Movement) -> Option<&str>,
) -> Truth {
    let movements = match value {
        ValueFacts::NotApplicable => return Truth::False,
        ValueFacts::Unknown => return Truth::Unknown,
        ValueFacts::Known(movements) => movements,
    };
    let each = movements.iter().map(|movement| match field(movement) {
        Some(text) => Truth::of(list.iter().any(|listed| eq_ignore_case(listed, text))),
        None => Truth::Unknown,
    });
    if effect == Effect::Deny {
        any(each)
    } else {
        all(each)
    }
}

/// The truth of a rule's conditions for `facts` (`requireMFA` is not a
/// matching condition).
fn conditions_truth(conditions: &Conditions, effect: Effect, facts: &RequestFacts) -> Truth {
    let native = [NATIVE_ASSET.to_owned()];
    let scope: &[String] = conditions.assets.as_deref().unwrap_or(&native);
    let mut truth = Truth::True;
    if let Some(max) = &conditions.max_amount {
        truth = truth.and(max_amount_truth(max, scope, &facts.value));
    }
    if let Some(min) = &conditions.min_amount {
        truth = truth.and(min_amount_truth(min, scope, &facts.value));
    }
    if let Some(assets) = &conditions.assets {
        truth = truth.and(listed_truth(assets, &facts.value, effect, |movement| {
            movement.asset.as_deref()
        }));
    }
    if let Some(destinations) = &conditions.destinations {
        truth = truth.and(listed_truth(
            destinations,
            &facts.value,
            effect,
            |movement| movement.destination.as_deref(),
        ));
    }
    if let Some(kinds) = &conditions.payload_kinds {
        truth =
            truth.and(Truth::of(facts.payload_kind.is_some_and(|kind| {
                kinds.iter().any(|listed| listed == kind.as_str())
            })));
    }
    if let Some(cidrs) = &conditions.allowed_ips {
        truth = truth.and(match facts.ip {
            None => Truth::Unknown,
            Some(ip) => Truth::of(
                cidrs
                    .iter()
                    .filter_map(|c| parse_cidr(c))
                    .any(|cidr| cidr.contains(ip)),
            ),
        });
    }
    if let Some(window) = &conditions.time_window {
        truth = truth.and(match window_holds(window, facts.unix_seconds) {
            Some(holds) => Truth::of(holds),
            None => Truth::Unknown,
        });
    }
    truth
}

/// Whether a rule whose action and resource match applies, failing closed:
/// permissive effects need every condition true, a deny applies unless a
/// condition is false.
fn rule_applies(rule: &Rule, facts: &RequestFacts) -> bool {
    let Some(conditions) = &rule.conditions else {
        return true;
    };
    match (
        rule.effect,
        conditions_truth(conditions, rule.effect, facts),
    ) {
        (_, Truth::True) => true,
        (Effect::Deny, Truth::Unknown) => true,
        (_, Truth::Unknown | Truth::False) => false,
    }
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
mod tests {
    use super::*;
    use std::time::Instant;

    // 2024-01-01 00:00:00 UTC, a Monday.
    const MON_2024: i64 = 1_704_067_200;
    const HOUR: i64 = 3600;
    const DAY: i64 = 86_400;

    fn rule(action: &str, resource: &str, effect: Effect) -> Rule {
        Rule {
            action: action.into(),
            resource: resource.into(),
            conditions: None,
            effect,
            approvals: (effect == Effect::RequireApproval).then(|| ApprovalRequirement {
                count: 1,
                roles: vec!["approver".into()],
            }),
        }
    }

    fn with(mut r: Rule, conditions: Conditions) -> Rule {
        r.conditions = Some(conditions);
        r
    }

    fn facts(action: &str, resource: &str) -> RequestFacts {
        RequestFacts {
            action: action.into(),
            resource: resource.into(),
            ip: None,
            value: ValueFacts::Unknown,
            payload_kind: None,
            unix_seconds: MON_2024 + 12 * HOUR,
        }
    }

    /// The single native movement of `f` (made when missing).
    fn movement(f: &mut RequestFacts) -> &mut Movement {
        if !matches!(&f.value, ValueFacts::Known(list) if list.len() == 1) {
            f.value = ValueFacts::Known(vec![Movement {
                asset: Some(NATIVE_ASSET.into()),
                amount: None,
                destination: None,
            }]);
        }
        match &mut f.value {
            ValueFacts::Known(list) => &mut list[0],
            _ => unreachable!(),
        }
    }

    fn amount(mut f: RequestFacts, a: &str) -> RequestFacts {
        movement(&mut f).amount = Some(a.into());
        f
    }

    fn ip(mut f: RequestFacts, ip: &str) -> RequestFacts {
        f.ip = Some(ip.parse().unwrap());
        f
    }

    fn at(mut f: RequestFacts, unix_seconds: i64) -> RequestFacts {
        f.unix_seconds = unix_seconds;
        f
    }

    fn dest(mut f: RequestFacts, d: &str) -> RequestFacts {
        movement(&mut f).destination = Some(d.into());
        f
    }

    /// Expected outcome, compact.
    #[derive(Debug, PartialEq)]
    enum Exp {
        /// Allow by (policy, rule, mfa).
        Allow(&'static str, usize, bool),
        /// Deny by (policy, rule).
        Deny(&'static str, usize),
        /// Default deny.
        NoMatch,
        /// Approval by (policy, rule, count, roles, mfa).
        Approve(&'static str, usize, u32, &'static [&'static str], bool),
    }

    fn check(policies: &[(&str, Vec<Rule>)], facts: &RequestFacts, expected: Exp) {
        for (_, rules) in policies {
            validate_rules(rules).unwrap();
        }
        let owned: Vec<(String, Vec<Rule>)> = policies
            .iter()
            .map(|(id, rules)| ((*id).to_owned(), rules.clone()))
            .collect();
        let decision = evaluate(&owned, facts);
        let r = |p: &str, i: usize| RuleRef {
            policy_id: p.into(),
            rule_index: i,
        };
        let ok = match (&expected, &decision) {
            (Exp::Allow(p, i, m), Decision::Allow { rule, require_mfa }) => {
                *rule == r(p, *i) && require_mfa == m
            }
            (Exp::Deny(p, i), Decision::Deny { rule, .. }) => *rule == Some(r(p, *i)),
            (Exp::NoMatch, Decision::Deny { rule, reason }) => {
                rule.is_none() && reason == "no rule matched"
            }
            (
                Exp::Approve(p, i, c, roles, m),
                Decision::RequireApproval {
                    rule,
                    count,
                    roles: got_roles,
                    require_mfa,
                },
            ) => *rule == r(p, *i) && count == c && got_roles == roles && require_mfa == m,
            _ => false,
        };
        assert!(
            ok,
            "facts {facts:?}: expected {expected:?}, got {decision:?}"
        );
        assert_eq!(
            decision.rule().is_none(),
            expected == Exp::NoMatch,
            "rule() of {decision:?}"
        );
    }

    fn max_amount(a: &str) -> Conditions {
        Conditions {
            max_amount: Some(a.into()),
            ..Conditions::default()
        }
    }

    fn ips(list: &[&str]) -> Conditions {
        Conditions {
            allowed_ips: Some(list.iter().map(|s| (*s).into()).collect()),
            ..Conditions::default()
        }
    }

    fn window(days: Option<&[&str]>, start: &str, end: &str) -> Conditions {
        Conditions {
            time_window: Some(TimeWindow {
                days: days.map(|d| d.iter().map(|s| (*s).into()).collect()),
                start: start.into(),
                end: end.into(),
            }),
            ..Conditions::default()
        }
    }

    #[test]
    fn deny_wins_and_first_match_decides() {
        let allow_all = rule("*", "*", Effect::Allow);
        let deny_sign = rule("wallet.sign", "wallet:treasury-*", Effect::Deny);
        let approve_sign = rule("wallet.*", "wallet:*", Effect::RequireApproval);
        let f = facts("wallet.sign", "wallet:treasury-hot");

        // Deny in a later policy wins over an earlier allow.
        check(
            &[
                ("p1", vec![allow_all.clone()]),
                ("p2", vec![deny_sign.clone()]),
            ],
            &f,
            Exp::Deny("p2", 0),
        );
        // Deny later in the same policy wins too.
        check(
            &[("p1", vec![allow_all.clone(), deny_sign.clone()])],
            &f,
            Exp::Deny("p1", 1),
        );
        // First deny is named.
        check(
            &[(
                "p1",
                vec![allow_all.clone(), deny_sign.clone(), deny_sign.clone()],
            )],
            &f,
            Exp::Deny("p1", 1),
        );
        // First match between allow and require_approval.
        check(
            &[("p1", vec![approve_sign.clone(), allow_all.clone()])],
            &f,
            Exp::Approve("p1", 0, 1, &["approver"], false),
        );
        check(
            &[
                ("p1", vec![allow_all.clone()]),
                ("p2", vec![approve_sign.clone()]),
            ],
            &f,
            Exp::Allow("p1", 0, false),
        );
        // Deny that does not match the resource is ignored.
        check(
            &[("p1", vec![deny_sign.clone(), allow_all.clone()])],
            &facts("wallet.sign", "wallet:cold"),
            Exp::Allow("p1", 1, false),
        );
        // Default deny.
        check(
            &[("p1", vec![deny_sign.clone()])],
            &facts("wallet.sign", "wallet:cold"),
            Exp::NoMatch,
        );
        check(&[], &f, Exp::NoMatch);
        check(
            &[("p1", vec![rule("secret.*", "secret:*", Effect::Allow)])],
            &f,
            Exp::NoMatch,
        );
    }

    #[test]
    fn action_globs() {
        let p = |a: &str| vec![("p", vec![rule(a, "*", Effect::Allow)])];
        check(
            &p("wallet.*"),
            &facts("wallet.create", "wallet:x"),
            Exp::Allow("p", 0, false),
        );
        check(
            &p("*.delete"),
            &facts("secret.delete", "secret:a/b"),
            Exp::Allow("p", 0, false),
        );
        check(
            &p("*.delete"),
            &facts("secret.read", "secret:a/b"),
            Exp::NoMatch,
        );
        check(
            &p("*"),
            &facts("audit.read", "audit:org"),
            Exp::Allow("p", 0, false),
        );
        check(
            &p("wallet.sign"),
            &facts("wallet.signx", "wallet:x"),
            Exp::NoMatch,
        );
    }

    #[test]
    fn max_amount_condition() {
        let pol = |max: &str| {
            vec![(
                "p",
                vec![with(
                    rule("wallet.sign", "wallet:*", Effect::Allow),
                    max_amount(max),
                )],
            )]
        };
        let f = facts("wallet.sign", "wallet:hot");
        check(
            &pol("1000"),
            &amount(f.clone(), "1000"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol("1000"),
            &amount(f.clone(), "999"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol("1000"),
            &amount(f.clone(), "0"),
            Exp::Allow("p", 0, false),
        );
        check(&pol("1000"), &amount(f.clone(), "1001"), Exp::NoMatch);
        check(&pol("1000"), &amount(f.clone(), "9999"), Exp::NoMatch);
        // Unknown or malformed amount: the condition does not hold.
        check(&pol("1000"), &f, Exp::NoMatch);
        check(&pol("1000"), &amount(f.clone(), "10.5"), Exp::NoMatch);
        check(&pol("1000"), &amount(f.clone(), ""), Exp::NoMatch);
        check(&pol("1000"), &amount(f.clone(), "-1"), Exp::NoMatch);
        // Leading zeros, on either side.
        check(
            &pol("0001000"),
            &amount(f.clone(), "1000"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol("1000"),
            &amount(f.clone(), "0000001000"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol("1000"),
            &amount(f.clone(), "00000001001"),
            Exp::NoMatch,
        );
        check(
            &pol("0"),
            &amount(f.clone(), "000"),
            Exp::Allow("p", 0, false),
        );
        // 78-digit amounts (2^256 - 1 and neighbours).
        let max = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        assert_eq!(max.len(), 78);
        let below =
            "115792089237316195423570985008687907853269984665640564039457584007913129639934";
        let above =
            "115792089237316195423570985008687907853269984665640564039457584007913129639936";
        let longer =
            "1000000000000000000000000000000000000000000000000000000000000000000000000000000";
        check(
            &pol(max),
            &amount(f.clone(), max),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol(max),
            &amount(f.clone(), below),
            Exp::Allow("p", 0, false),
        );
        check(&pol(max), &amount(f.clone(), above), Exp::NoMatch);
        check(&pol(max), &amount(f.clone(), longer), Exp::NoMatch);
        check(&pol(below), &amount(f.clone(), max), Exp::NoMatch);
        check(
            &pol("1000000000000000000"),
            &amount(f.clone(), max),
            Exp::NoMatch,
        );
        check(
            &pol(max),
            &amount(f.clone(), "1"),
            Exp::Allow("p", 0, false),
        );

        // Typical use: deny above a limit by ordering an allow with the limit
        // first and an approval rule after.
        let tiered = vec![(
            "p",
            vec![
                with(
                    rule("wallet.sign", "wallet:*", Effect::Allow),
                    max_amount("1000"),
                ),
                rule("wallet.sign", "wallet:*", Effect::RequireApproval),
            ],
        )];
        check(&tiered, &amount(f.clone(), "5"), Exp::Allow("p", 0, false));
        check(
            &tiered,
            &amount(f.clone(), "5000"),
            Exp::Approve("p", 1, 1, &["approver"], false),
        );
        check(&tiered, &f, Exp::Approve("p", 1, 1, &["approver"], false));
    }

    #[test]
    fn allowed_ips_condition() {
        let pol = |list: &[&str]| vec![("p", vec![with(rule("*", "*", Effect::Allow), ips(list))])];
        let f = facts("wallet.read", "wallet:hot");
        check(
            &pol(&["10.0.0.0/8"]),
            &ip(f.clone(), "10.1.2.3"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol(&["10.0.0.0/8"]),
            &ip(f.clone(), "11.1.2.3"),
            Exp::NoMatch,
        );
        check(&pol(&["10.0.0.0/8"]), &f, Exp::NoMatch);
        check(
            &pol(&["192.168.1.7/32"]),
            &ip(f.clone(), "192.168.1.7"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol(&["192.168.1.7/32"]),
            &ip(f.clone(), "192.168.1.8"),
            Exp::NoMatch,
        );
        check(
            &pol(&["192.168.1.7"]),
            &ip(f.clone(), "192.168.1.7"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol(&["0.0.0.0/0"]),
            &ip(f.clone(), "203.0.113.9"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol(&["0.0.0.0/0"]),
            &ip(f.clone(), "2001:db8::1"),
            Exp::NoMatch,
        );
        check(
            &pol(&["172.16.0.0/12"]),
            &ip(f.clone(), "172.31.255.255"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol(&["172.16.0.0/12"]),
            &ip(f.clone(), "172.32.0.0"),
            Exp::NoMatch,
        );
        // Host bits are ignored.
        check(
            &pol(&["10.9.9.9/8"]),
            &ip(f.clone(), "10.1.2.3"),
            Exp::Allow("p", 0, false),
        );
        // IPv6.
        check(
            &pol(&["2001:db8::/32"]),
            &ip(f.clone(), "2001:db8:1::5"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol(&["2001:db8::/32"]),
            &ip(f.clone(), "2001:db9::5"),
            Exp::NoMatch,
        );
        check(
            &pol(&["2001:db8::/32"]),
            &ip(f.clone(), "10.0.0.1"),
            Exp::NoMatch,
        );
        check(
            &pol(&["::1/128"]),
            &ip(f.clone(), "::1"),
            Exp::Allow("p", 0, false),
        );
        check(&pol(&["::1"]), &ip(f.clone(), "::2"), Exp::NoMatch);
        check(
            &pol(&["::/0"]),
            &ip(f.clone(), "2001:db8::1"),
            Exp::Allow("p", 0, false),
        );
        // IPv4-mapped IPv6 counts as IPv4.
        check(
            &pol(&["10.0.0.0/8"]),
            &ip(f.clone(), "::ffff:10.1.2.3"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol(&["10.0.0.0/8"]),
            &ip(f.clone(), "::ffff:11.1.2.3"),
            Exp::NoMatch,
        );
        check(
            &pol(&["::ffff:10.0.0.0/104"]),
            &ip(f.clone(), "10.7.7.7"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol(&["::ffff:10.0.0.0/104"]),
            &ip(f.clone(), "::ffff:10.7.7.7"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol(&["::ffff:10.0.0.0/104"]),
            &ip(f.clone(), "11.7.7.7"),
            Exp::NoMatch,
        );
        // Any entry of the list.
        check(
            &pol(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]),
            &ip(f.clone(), "192.0.2.1"),
            Exp::Allow("p", 0, false),
        );
        // A deny on an IP range wins.
        let deny_range = vec![(
            "p",
            vec![
                rule("*", "*", Effect::Allow),
                with(rule("*", "*", Effect::Deny), ips(&["198.51.100.0/24"])),
            ],
        )];
        check(
            &deny_range,
            &ip(f.clone(), "198.51.100.77"),
            Exp::Deny("p", 1),
        );
        check(
            &deny_range,
            &ip(f.clone(), "198.51.101.77"),
            Exp::Allow("p", 0, false),
        );
        // An unknown client address cannot be shown to lie outside the
        // denied range: the deny matches (fail closed).
        check(&deny_range, &f, Exp::Deny("p", 1));
    }

    #[test]
    fn weekday_computation() {
        assert_eq!(weekday_and_minute(0), (3, 0)); // Thursday 1970-01-01
        assert_eq!(weekday_and_minute(MON_2024), (0, 0));
        assert_eq!(
            weekday_and_minute(MON_2024 + 6 * DAY + 23 * HOUR + 59 * 60 + 59),
            (6, 1439)
        );
        assert_eq!(weekday_and_minute(-1), (2, 1439)); // Wednesday 1969-12-31 23:59
        assert_eq!(weekday_and_minute(1_000_000_000), (6, 106)); // Sun 2001-09-09 01:46
        let _ = weekday_and_minute(i64::MIN);
        let _ = weekday_and_minute(i64::MAX);
    }

    #[test]
    fn time_window_condition() {
        let pol = |c: Conditions| vec![("p", vec![with(rule("*", "*", Effect::Allow), c)])];
        let f = facts("wallet.sign", "wallet:hot");
        let office = pol(window(
            Some(&["mon", "tue", "wed", "thu", "fri"]),
            "09:00",
            "17:00",
        ));
        check(
            &office,
            &at(f.clone(), MON_2024 + 9 * HOUR),
            Exp::Allow("p", 0, false),
        );
        check(
            &office,
            &at(f.clone(), MON_2024 + 12 * HOUR),
            Exp::Allow("p", 0, false),
        );
        check(
            &office,
            &at(f.clone(), MON_2024 + 17 * HOUR - 1),
            Exp::Allow("p", 0, false),
        );
        check(&office, &at(f.clone(), MON_2024 + 17 * HOUR), Exp::NoMatch);
        check(
            &office,
            &at(f.clone(), MON_2024 + 9 * HOUR - 60),
            Exp::NoMatch,
        );
        // Saturday noon: day filter refuses.
        check(
            &office,
            &at(f.clone(), MON_2024 + 5 * DAY + 12 * HOUR),
            Exp::NoMatch,
        );
        check(
            &office,
            &at(f.clone(), MON_2024 + 4 * DAY + 12 * HOUR),
            Exp::Allow("p", 0, false),
        );
        // No day filter: every day.
        let any_day = pol(window(None, "09:00", "17:00"));
        check(
            &any_day,
            &at(f.clone(), MON_2024 + 6 * DAY + 10 * HOUR),
            Exp::Allow("p", 0, false),
        );
        check(
            &any_day,
            &at(f.clone(), MON_2024 + 6 * DAY + 20 * HOUR),
            Exp::NoMatch,
        );
        // Overnight window opening on Fridays only: Fri 22:00 to Sat 06:00.
        let night = pol(window(Some(&["fri"]), "22:00", "06:00"));
        let fri = MON_2024 + 4 * DAY;
        check(
            &night,
            &at(f.clone(), fri + 22 * HOUR),
            Exp::Allow("p", 0, false),
        );
        check(
            &night,
            &at(f.clone(), fri + 23 * HOUR + 59 * 60),
            Exp::Allow("p", 0, false),
        );
        check(
            &night,
            &at(f.clone(), fri + DAY + 3 * HOUR),
            Exp::Allow("p", 0, false),
        );
        check(&night, &at(f.clone(), fri + DAY + 6 * HOUR), Exp::NoMatch);
        check(&night, &at(f.clone(), fri + DAY + 12 * HOUR), Exp::NoMatch);
        // Friday 03:00 belongs to Thursday's window.
        check(&night, &at(f.clone(), fri + 3 * HOUR), Exp::NoMatch);
        // Saturday 22:00 opens Saturday's window.
        check(&night, &at(f.clone(), fri + DAY + 22 * HOUR), Exp::NoMatch);
        check(&night, &at(f.clone(), fri + 12 * HOUR), Exp::NoMatch);
        // Overnight across the week boundary: Sunday night into Monday.
        let sunday_night = pol(window(Some(&["sun"]), "20:00", "02:00"));
        check(
            &sunday_night,
            &at(f.clone(), MON_2024 + HOUR),
            Exp::Allow("p", 0, false),
        );
        check(
            &sunday_night,
            &at(f.clone(), MON_2024 - 2 * HOUR),
            Exp::Allow("p", 0, false),
        );
        check(
            &sunday_night,
            &at(f.clone(), MON_2024 + DAY + HOUR),
            Exp::NoMatch,
        );
        // Window until midnight.
        let evening = pol(window(None, "18:00", "00:00"));
        check(
            &evening,
            &at(f.clone(), MON_2024 + 23 * HOUR),
            Exp::Allow("p", 0, false),
        );
        check(&evening, &at(f.clone(), MON_2024 + DAY), Exp::NoMatch);
        // Before 1970 works too (1969-12-31 was a Wednesday).
        let wed = pol(window(Some(&["wed"]), "23:00", "23:59"));
        check(&wed, &at(f.clone(), -30 * 60), Exp::Allow("p", 0, false));
    }

    #[test]
    fn destinations_condition() {
        let c = Conditions {
            destinations: Some(vec!["0xAbCdEf0123".into(), "bc1qxyz".into()]),
            ..Conditions::default()
        };
        let pol = vec![("p", vec![with(rule("wallet.sign", "*", Effect::Allow), c)])];
        let f = facts("wallet.sign", "wallet:hot");
        check(
            &pol,
            &dest(f.clone(), "0xabcdef0123"),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol,
            &dest(f.clone(), "0XABCDEF0123"),
            Exp::Allow("p", 0, false),
        );
        check(&pol, &dest(f.clone(), "BC1QXYZ"), Exp::Allow("p", 0, false));
        check(&pol, &dest(f.clone(), "0xabcdef01234"), Exp::NoMatch);
        check(&pol, &dest(f.clone(), "0xabcdef012"), Exp::NoMatch);
        check(&pol, &f, Exp::NoMatch);
    }

    #[test]
    fn all_conditions_must_hold_and_mfa_is_carried() {
        let c = Conditions {
            max_amount: Some("100".into()),
            allowed_ips: Some(vec!["10.0.0.0/8".into()]),
            require_mfa: Some(true),
            time_window: None,
            destinations: Some(vec!["0xabc".into()]),
            ..Conditions::default()
        };
        let pol = vec![(
            "p",
            vec![
                with(rule("wallet.sign", "wallet:*", Effect::Allow), c.clone()),
                with(
                    rule("wallet.sign", "wallet:*", Effect::RequireApproval),
                    Conditions {
                        require_mfa: Some(true),
                        ..Conditions::default()
                    },
                ),
            ],
        )];
        let full = dest(
            ip(amount(facts("wallet.sign", "wallet:hot"), "50"), "10.0.0.1"),
            "0xABC",
        );
        check(&pol, &full, Exp::Allow("p", 0, true));
        let big = amount(full.clone(), "101");
        check(&pol, &big, Exp::Approve("p", 1, 1, &["approver"], true));
        let mut outside = full.clone();
        outside.ip = Some("11.0.0.1".parse().unwrap());
        check(&pol, &outside, Exp::Approve("p", 1, 1, &["approver"], true));
        // requireMFA false and absent.
        let no_mfa = vec![(
            "p",
            vec![with(
                rule("*", "*", Effect::Allow),
                Conditions {
                    require_mfa: Some(false),
                    ..Conditions::default()
                },
            )],
        )];
        check(&no_mfa, &full, Exp::Allow("p", 0, false));
        // requireMFA alone never stops a rule from matching.
        let deny_mfa = vec![(
            "p",
            vec![
                rule("*", "*", Effect::Allow),
                with(
                    rule("*", "*", Effect::Deny),
                    Conditions {
                        require_mfa: Some(true),
                        ..Conditions::default()
                    },
                ),
            ],
        )];
        check(&deny_mfa, &full, Exp::Deny("p", 1));
    }

    #[test]
    fn default_rules_behaviour() {
        let d = vec![("default", default_rules())];
        validate_rules(&default_rules()).unwrap();
        let both: &[&str] = &["admin", "approver"];
        let admin: &[&str] = &["admin"];
        for (action, resource) in [
            ("wallet.sign", "wallet:treasury-hot"),
            ("wallet.create", "wallet:new"),
            ("wallet.read", "wallet:new"),
            ("wallet.freeze", "wallet:new"),
            ("audit.read", "audit:org"),
            ("identity.disable", "identity:x"),
        ] {
            check(
                &d,
                &facts(action, resource),
                Exp::Allow("default", 13, false),
            );
        }
        // Separation of duties: changes that could defeat an approval wait
        // for one admin's approval.
        for (index, action) in [
            (7, "policy.create"),
            (8, "policy.update"),
            (9, "identity.create"),
            (10, "identity.update"),
            (11, "identity.mfa_reset"),
            (12, "wallet.unfreeze"),
        ] {
            check(
                &d,
                &facts(action, "x:y"),
                Exp::Approve("default", index, 1, admin, false),
            );
        }
        check(
            &d,
            &facts("secret.delete", "secret:production/payments/stripe"),
            Exp::Approve("default", 1, 2, both, false),
        );
        check(
            &d,
            &facts("key.destroy", "key:k1"),
            Exp::Approve("default", 2, 2, both, false),
        );
        check(
            &d,
            &facts("secret.destroy", "secret:production/payments/stripe"),
            Exp::Approve("default", 2, 2, both, false),
        );
        check(
            &d,
            &facts("key.rotate", "key:k1"),
            Exp::Approve("default", 3, 1, admin, false),
        );
        check(
            &d,
            &facts("transit.rotate", "transit:t"),
            Exp::Approve("default", 4, 1, admin, false),
        );
        check(
            &d,
            &facts("wallet.reshare", "wallet:cold"),
            Exp::Approve("default", 5, 1, admin, false),
        );
        check(
            &d,
            &facts("wallet.restore", "wallet:cold"),
            Exp::Approve("default", 6, 1, admin, false),
        );
        check(&d, &facts("key.export", "key:k1"), Exp::Deny("default", 0));
        check(
            &d,
            &facts("wallet.export", "wallet:x"),
            Exp::Deny("default", 0),
        );
        // A user policy allowing exports earlier does not beat the default deny.
        check(
            &[
                ("mine", vec![rule("key.export", "*", Effect::Allow)]),
                ("default", default_rules()),
            ],
            &facts("key.export", "key:k1"),
            Exp::Deny("default", 0),
        );
    }

    fn moving(movements: &[(Option<&str>, Option<&str>, Option<&str>)]) -> RequestFacts {
        let mut f = facts("wallet.sign", "wallet:hot");
        f.payload_kind = Some(PayloadKind::Transaction);
        f.value = ValueFacts::Known(
            movements
                .iter()
                .map(|(asset, amount, destination)| Movement {
                    asset: asset.map(str::to_owned),
                    amount: amount.map(str::to_owned),
                    destination: destination.map(str::to_owned),
                })
                .collect(),
        );
        f
    }

    fn digest() -> RequestFacts {
        let mut f = facts("wallet.sign", "wallet:hot");
        f.payload_kind = Some(PayloadKind::Digest);
        f.value = ValueFacts::Unknown;
        f
    }

    const USDC: &str = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";

    #[test]
    fn a_deny_whose_condition_cannot_be_evaluated_matches() {
        let blocklist = Conditions {
            destinations: Some(vec!["0xbad".into()]),
            ..Conditions::default()
        };
        let pol = vec![(
            "p",
            vec![
                rule("*", "*", Effect::Allow),
                with(rule("wallet.sign", "*", Effect::Deny), blocklist),
            ],
        )];
        // Known and listed: denied; known and not listed: allowed.
        check(
            &pol,
            &moving(&[(Some("native"), Some("1"), Some("0xBAD"))]),
            Exp::Deny("p", 1),
        );
        check(
            &pol,
            &moving(&[(Some("native"), Some("1"), Some("0xgood"))]),
            Exp::Allow("p", 0, false),
        );
        // Unknown destination (a digest, a message, calldata not
        // understood, or one movement of several): the deny matches.
        check(&pol, &digest(), Exp::Deny("p", 1));
        check(
            &pol,
            &moving(&[
                (Some("native"), Some("0"), Some("0xgood")),
                (None, None, None),
            ]),
            Exp::Deny("p", 1),
        );
        // One forbidden movement is enough, whatever else moves beside it.
        check(
            &pol,
            &moving(&[
                (Some("native"), Some("1"), Some(USDC)),
                (Some(USDC), Some("100"), Some("0xbad")),
            ]),
            Exp::Deny("p", 1),
        );
        // A request that moves nothing is not a transfer to 0xbad.
        check(
            &pol,
            &facts("transit.encrypt", "transit-key:k"),
            Exp::Allow("p", 0, false),
        );
    }

    #[test]
    fn an_allow_whose_condition_cannot_be_evaluated_does_not_match() {
        let pol = vec![(
            "p",
            vec![
                with(rule("wallet.sign", "*", Effect::Allow), max_amount("100")),
                with(
                    rule("wallet.sign", "*", Effect::Allow),
                    Conditions {
                        destinations: Some(vec!["0xcold".into()]),
                        ..Conditions::default()
                    },
                ),
                with(rule("*", "*", Effect::Allow), ips(&["10.0.0.0/8"])),
            ],
        )];
        check(
            &pol,
            &moving(&[(Some("native"), Some("100"), Some("0xany"))]),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol,
            &moving(&[(Some("native"), Some("101"), Some("0xcold"))]),
            Exp::Allow("p", 1, false),
        );
        // A bare digest is unknown amount, destination and asset: no
        // allow with a condition on them matches; an unknown client address
        // does not satisfy allowedIPs.
        check(&pol, &digest(), Exp::NoMatch);
        check(
            &pol,
            &moving(&[(Some("native"), None, Some("0xany"))]),
            Exp::NoMatch,
        );
        check(&pol, &ip(digest(), "10.1.2.3"), Exp::Allow("p", 2, false));
        check(&pol, &digest(), Exp::NoMatch);
    }

    #[test]
    fn a_require_approval_whose_condition_cannot_be_evaluated_does_not_match() {
        let pol = vec![(
            "p",
            vec![
                with(
                    rule("wallet.sign", "*", Effect::RequireApproval),
                    max_amount("100"),
                ),
                rule("wallet.sign", "*", Effect::Deny),
            ],
        )];
        // Unknown: not the approval rule; the unconditional deny decides.
        check(&pol, &digest(), Exp::Deny("p", 1));
    }

    #[test]
    fn max_amount_without_assets_covers_only_the_native_asset() {
        let pol = vec![(
            "p",
            vec![
                with(
                    rule("wallet.sign", "*", Effect::Allow),
                    max_amount("1000000000000000000"),
                ),
                rule("wallet.sign", "*", Effect::RequireApproval),
            ],
        )];
        // One ether passes; a million USDC (10^12 base units, far below
        // 10^18) must not pass a limit written in wei.
        check(
            &pol,
            &moving(&[(Some("native"), Some("1000000000000000000"), Some("0xa"))]),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol,
            &moving(&[
                (Some("native"), Some("0"), Some(USDC)),
                (Some(USDC), Some("1000000000000"), Some("0xa")),
            ]),
            Exp::Approve("p", 1, 1, &["approver"], false),
        );
    }

    #[test]
    fn max_amount_of_a_token_applies_in_that_tokens_base_units() {
        let usdc_limit = Conditions {
            max_amount: Some("1000000000".into()),
            assets: Some(vec![
                NATIVE_ASSET.into(),
                USDC.to_uppercase().replace("0X", "0x"),
            ]),
            ..Conditions::default()
        };
        let pol = vec![(
            "p",
            vec![
                with(rule("wallet.sign", "*", Effect::Allow), usdc_limit),
                rule("wallet.sign", "*", Effect::RequireApproval),
            ],
        )];
        let transfer = |amount: &str| {
            moving(&[
                (Some("native"), Some("0"), Some(USDC)),
                (Some(USDC), Some(amount), Some("0xa")),
            ])
        };
        check(&pol, &transfer("1000000000"), Exp::Allow("p", 0, false));
        check(
            &pol,
            &transfer("1000000001"),
            Exp::Approve("p", 1, 1, &["approver"], false),
        );
        // Another token is outside the rule's assets.
        check(
            &pol,
            &moving(&[(
                Some("0xdac17f958d2ee523a2206206994597c13d831ec7"),
                Some("1"),
                Some("0xa"),
            )]),
            Exp::Approve("p", 1, 1, &["approver"], false),
        );
        // Two movements of the same asset add up.
        check(
            &pol,
            &moving(&[
                (Some(USDC), Some("600000000"), Some("0xa")),
                (Some(USDC), Some("600000000"), Some("0xb")),
            ]),
            Exp::Approve("p", 1, 1, &["approver"], false),
        );
    }

    #[test]
    fn min_amount_caps_transfers_and_fails_closed() {
        let cap = Conditions {
            min_amount: Some("1000".into()),
            ..Conditions::default()
        };
        let pol = vec![(
            "p",
            vec![
                rule("*", "*", Effect::Allow),
                with(rule("wallet.sign", "*", Effect::Deny), cap),
            ],
        )];
        check(
            &pol,
            &moving(&[(Some("native"), Some("999"), Some("0xa"))]),
            Exp::Allow("p", 0, false),
        );
        check(
            &pol,
            &moving(&[(Some("native"), Some("1000"), Some("0xa"))]),
            Exp::Deny("p", 1),
        );
        // A known total over the cap decides even beside an unknown one.
        check(
            &pol,
            &moving(&[
                (Some("native"), Some("5000"), Some("0xa")),
                (None, None, None),
            ]),
            Exp::Deny("p", 1),
        );
        check(&pol, &digest(), Exp::Deny("p", 1));
        // A token is not the native asset the cap is written in.
        check(
            &pol,
            &moving(&[(Some(USDC), Some("5000"), Some("0xa"))]),
            Exp::Allow("p", 0, false),
        );
    }

    #[test]
    fn payload_kinds_let_an_org_forbid_raw_digests() {
        let digests = Conditions {
            payload_kinds: Some(vec!["digest".into()]),
            ..Conditions::default()
        };
        let pol = vec![(
            "p",
            vec![
                rule("*", "*", Effect::Allow),
                with(rule("wallet.sign", "wallet:hot", Effect::Deny), digests),
            ],
        )];
        check(&pol, &digest(), Exp::Deny("p", 1));
        check(
            &pol,
            &moving(&[(Some("native"), Some("1"), Some("0xa"))]),
            Exp::Allow("p", 0, false),
        );
        let mut message = facts("wallet.sign", "wallet:hot");
        message.payload_kind = Some(PayloadKind::Message);
        check(&pol, &message, Exp::Allow("p", 0, false));
        // Another wallet may still sign digests.
        let mut other = digest();
        other.resource = "wallet:cold".into();
        check(&pol, &other, Exp::Allow("p", 0, false));
        // Requests that sign nothing have no payload kind.
        let only_transactions = vec![(
            "p",
            vec![with(
                rule("*", "*", Effect::Allow),
                Conditions {
                    payload_kinds: Some(vec!["transaction".into()]),
                    ..Conditions::default()
                },
            )],
        )];
        check(
            &only_transactions,
            &facts("transit.encrypt", "transit-key:k"),
            Exp::NoMatch,
        );
    }

    #[test]
    fn value_conditions_are_false_for_requests_that_move_nothing() {
        let mut f = facts("secret.read", "secret:prod/db");
        f.value = ValueFacts::NotApplicable;
        for conditions in [
            max_amount("1"),
            Conditions {
                min_amount: Some("1".into()),
                ..Conditions::default()
            },
            Conditions {
                assets: Some(vec!["native".into()]),
                ..Conditions::default()
            },
            Conditions {
                destinations: Some(vec!["0xa".into()]),
                ..Conditions::default()
            },
        ] {
            let allow = vec![(
                "p",
                vec![with(rule("*", "*", Effect::Allow), conditions.clone())],
            )];
            check(&allow, &f, Exp::NoMatch);
            let deny = vec![(
                "p",
                vec![
                    rule("*", "*", Effect::Allow),
                    with(rule("*", "*", Effect::Deny), conditions),
                ],
            )];
            check(&deny, &f, Exp::Allow("p", 0, false));
        }
    }

    #[test]
    fn decimal_addition_carries_past_256_bits() {
        assert_eq!(add_decimal("0", "0"), "0");
        assert_eq!(add_decimal("999", "1"), "1000");
        assert_eq!(add_decimal("1", "999"), "1000");
        let max = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        assert_eq!(
            add_decimal(max, max),
            "231584178474632390847141970017375815706539969331281128078915168015826259279870"
        );
    }

    #[test]
    fn new_conditions_are_validated() {
        for (conditions, field) in [
            (
                Conditions {
                    min_amount: Some("1.5".into()),
                    ..Conditions::default()
                },
                "rules[0].conditions.minAmount",
            ),
            (
                Conditions {
                    payload_kinds: Some(vec!["psbt?".into()]),
                    ..Conditions::default()
                },
                "rules[0].conditions.payloadKinds[0]",
            ),
            (
                Conditions {
                    assets: Some(vec![]),
                    ..Conditions::default()
                },
                "rules[0].conditions.assets",
            ),
        ] {
            let error =
                validate_rules(&[with(rule("*", "*", Effect::Allow), conditions)]).unwrap_err();
            assert_eq!(error.field(), field);
        }
    }

    #[test]
    fn glob() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "wallet:x", true),
            ("", "", true),
            ("", "a", false),
            ("wallet:*", "wallet:treasury-hot", true),
            ("wallet:*", "wallet:", true),
            ("wallet:*", "secret:x", false),
            (
                "secret:production/*",
                "secret:production/payments/stripe",
                true,
            ),
            ("secret:*/stripe", "secret:production/payments/stripe", true),
            (
                "secret:*/stripe",
                "secret:production/payments/stripe2",
                false,
            ),
            ("wallet:?", "wallet:a", true),
            ("wallet:?", "wallet:ab", false),
            ("wallet:?", "wallet:", false),
            ("wallet:é?", "wallet:éx", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a**", "a", true),
            ("*a", "bab", false),
            ("*a", "ba", true),
            ("*.delete", "secret.delete", true),
            ("*.delete", "secret.deleted", false),
            ("wallet.*", "wallet.sign", true),
            ("wallet.*", "walletXsign", false),
            ("a.b", "aXb", false),
            ("?*?", "ab", true),
            ("?*?", "a", false),
        ];
        for (p, t, expected) in cases {
            assert_eq!(glob_match(p, t), *expected, "glob {p:?} vs {t:?}");
        }
    }

    #[test]
    fn glob_is_not_exponential() {
        let text = "a".repeat(50);
        let start = Instant::now();
        assert!(!glob_match("a*a*a*a*a*a*b", &text));
        assert!(!glob_match(
            &format!("{}b", "*a".repeat(30)),
            &"a".repeat(1000)
        ));
        assert!(glob_match("a*a*a*a*a*a*", &text));
        assert!(
            start.elapsed().as_millis() < 500,
            "took {:?}",
            start.elapsed()
        );
    }

    const BODY: &str = r#"{"action":"wallet.sign","resource":"wallet:*","conditions":{"maxAmount":"1000000000000000000","allowedIPs":["10.0.0.0/8"],"requireMFA":true,"timeWindow":{"days":["mon","tue"],"start":"09:00","end":"17:00"},"destinations":["0xabc"]},"effect":"require_approval","approvals":{"count":2,"roles":["approver"]}}"#;

    #[test]
    fn serde_round_trip() {
        let rule: Rule = serde_json::from_str(BODY).unwrap();
        assert_eq!(
            rule,
            Rule {
                action: "wallet.sign".into(),
                resource: "wallet:*".into(),
                conditions: Some(Conditions {
                    max_amount: Some("1000000000000000000".into()),
                    allowed_ips: Some(vec!["10.0.0.0/8".into()]),
                    require_mfa: Some(true),
                    time_window: Some(TimeWindow {
                        days: Some(vec!["mon".into(), "tue".into()]),
                        start: "09:00".into(),
                        end: "17:00".into(),
                    }),
                    destinations: Some(vec!["0xabc".into()]),
                    ..Conditions::default()
                }),
                effect: Effect::RequireApproval,
                approvals: Some(ApprovalRequirement {
                    count: 2,
                    roles: vec!["approver".into()],
                }),
            }
        );
        validate_rules(std::slice::from_ref(&rule)).unwrap();
        assert_eq!(serde_json::to_string(&rule).unwrap(), BODY);

        // Minimal rule: optional fields omitted both ways.
        let min = r#"{"action":"*","resource":"*","effect":"allow"}"#;
        let rule: Rule = serde_json::from_str(min).unwrap();
        assert_eq!(serde_json::to_string(&rule).unwrap(), min);
        let rules: Vec<Rule> =
            serde_json::from_str(&serde_json::to_string(&default_rules()).unwrap()).unwrap();
        assert_eq!(rules, default_rules());
    }

    #[test]
    fn serde_refuses_unknown_fields() {
        let bad = [
            BODY.replace("maxAmount", "maxAmout"),
            BODY.replace("allowedIPs", "allowedIps"),
            BODY.replace("\"start\"", "\"begin\""),
            BODY.replace("\"count\"", "\"n\""),
            BODY.replace("\"effect\"", "\"efect\""),
            BODY.replace("require_approval", "requireApproval"),
            r#"{"action":"*","resource":"*","effect":"allow","extra":1}"#.to_owned(),
        ];
        for body in &bad {
            assert!(
                serde_json::from_str::<Rule>(body).is_err(),
                "accepted {body}"
            );
        }
        let err = serde_json::from_str::<Rule>(&bad[0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("maxAmout"), "{err}");
    }

    #[test]
    fn decision_serializes() {
        let d = Decision::RequireApproval {
            rule: RuleRef {
                policy_id: "p".into(),
                rule_index: 3,
            },
            count: 2,
            roles: vec!["admin".into()],
            require_mfa: true,
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"effect":"require_approval","rule":{"policyId":"p","ruleIndex":3},"count":2,"roles":["admin"],"requireMfa":true}"#
        );
    }

    fn validation_error(rules: Vec<Rule>) -> String {
        let err = validate_rules(&rules).unwrap_err();
        assert_eq!(err.code(), "invalid_policy");
        assert_eq!(
            err.to_string(),
            format!("{}: {}", err.field(), err.reason())
        );
        err.to_string()
    }

    #[test]
    fn validation_names_the_field() {
        let ok = rule("*", "*", Effect::Allow);
        let cond = |c: Conditions| with(rule("wallet.sign", "wallet:*", Effect::Allow), c);
        let approval = |count: u32, roles: &[&str]| Rule {
            approvals: Some(ApprovalRequirement {
                count,
                roles: roles.iter().map(|r| (*r).into()).collect(),
            }),
            ..rule("wallet.sign", "wallet:*", Effect::RequireApproval)
        };
        let cases: Vec<(Vec<Rule>, &str)> = vec![
            (vec![], "rules: must contain at least one rule"),
            (vec![ok.clone(); 101], "rules: at most 100 rules"),
            (
                vec![
                    ok.clone(),
                    ok.clone(),
                    cond(ips(&["10.0.0.0/8", "10.0.0.0/33"])),
                ],
                "rules[2].conditions.allowedIPs[1]: invalid CIDR",
            ),
            (
                vec![cond(ips(&["300.0.0.0/8"]))],
                "rules[0].conditions.allowedIPs[0]: invalid CIDR",
            ),
            (
                vec![cond(ips(&["::/129"]))],
                "rules[0].conditions.allowedIPs[0]: invalid CIDR",
            ),
            (
                vec![cond(ips(&["10.0.0.0/"]))],
                "rules[0].conditions.allowedIPs[0]: invalid CIDR",
            ),
            (
                vec![cond(ips(&["10.0.0.0/+8"]))],
                "rules[0].conditions.allowedIPs[0]: invalid CIDR",
            ),
            (
                vec![cond(ips(&["fe80::1%eth0"]))],
                "rules[0].conditions.allowedIPs[0]: invalid CIDR",
            ),
            (
                vec![cond(ips(&[]))],
                "rules[0].conditions.allowedIPs: must not be empty",
            ),
            (
                vec![rule("Wallet.sign", "*", Effect::Allow)],
                "rules[0].action:",
            ),
            (vec![rule("wallet", "*", Effect::Allow)], "rules[0].action:"),
            (
                vec![rule("wallet.sign.x", "*", Effect::Allow)],
                "rules[0].action:",
            ),
            (
                vec![rule("wal*.sign", "*", Effect::Allow)],
                "rules[0].action:",
            ),
            (vec![rule(".sign", "*", Effect::Allow)], "rules[0].action:"),
            (
                vec![rule("", "*", Effect::Allow)],
                "rules[0].action: must not be empty",
            ),
            (
                vec![ok.clone(), rule("*", "wallet:a b", Effect::Allow)],
                "rules[1].resource: invalid character",
            ),
            (
                vec![rule("*", "", Effect::Allow)],
                "rules[0].resource: must not be empty",
            ),
            (
                vec![rule("*", &"a".repeat(257), Effect::Allow)],
                "rules[0].resource: too long",
            ),
            (
                vec![Rule {
                    approvals: None,
                    ..rule("*", "*", Effect::RequireApproval)
                }],
                "rules[0].approvals: required",
            ),
            (
                vec![Rule {
                    approvals: approval(1, &["admin"]).approvals,
                    ..ok.clone()
                }],
                "rules[0].approvals: only allowed",
            ),
            (
                vec![approval(0, &["admin"])],
                "rules[0].approvals.count: must be between 1 and 10",
            ),
            (
                vec![approval(11, &["admin"])],
                "rules[0].approvals.count: must be between 1 and 10",
            ),
            (
                vec![approval(1, &[])],
                "rules[0].approvals.roles: must not be empty",
            ),
            (
                vec![approval(1, &["admin", "root"])],
                "rules[0].approvals.roles[1]: unknown role",
            ),
            (
                vec![approval(1, &["admin", "admin"])],
                "rules[0].approvals.roles[1]: duplicate role",
            ),
            (
                vec![cond(max_amount("1e18"))],
                "rules[0].conditions.maxAmount: expected a decimal",
            ),
            (
                vec![cond(max_amount(""))],
                "rules[0].conditions.maxAmount: expected a decimal",
            ),
            (
                vec![cond(max_amount("-5"))],
                "rules[0].conditions.maxAmount: expected a decimal",
            ),
            (
                vec![cond(max_amount(&"9".repeat(79)))],
                "rules[0].conditions.maxAmount: too many digits",
            ),
            (
                vec![cond(window(None, "9:00", "17:00"))],
                "rules[0].conditions.timeWindow.start: invalid time",
            ),
            (
                vec![cond(window(None, "09:00", "24:00"))],
                "rules[0].conditions.timeWindow.end: invalid time",
            ),
            (
                vec![cond(window(None, "09:60", "10:00"))],
                "rules[0].conditions.timeWindow.start: invalid time",
            ),
            (
                vec![cond(window(None, "09:00", "09:00"))],
                "rules[0].conditions.timeWindow.end: must differ",
            ),
            (
                vec![cond(window(Some(&["mon", "funday"]), "09:00", "17:00"))],
                "rules[0].conditions.timeWindow.days[1]: unknown day",
            ),
            (
                vec![cond(window(Some(&[]), "09:00", "17:00"))],
                "rules[0].conditions.timeWindow.days: must not be empty",
            ),
            (
                vec![cond(Conditions {
                    destinations: Some(vec!["0xabc".into(), String::new()]),
                    ..Conditions::default()
                })],
                "rules[0].conditions.destinations[1]: must not be empty",
            ),
            (
                vec![cond(Conditions {
                    destinations: Some(vec![" 0xabc".into()]),
                    ..Conditions::default()
                })],
                "rules[0].conditions.destinations[0]:",
            ),
            (
                vec![cond(Conditions {
                    destinations: Some(vec![]),
                    ..Conditions::default()
                })],
                "rules[0].conditions.destinations: must not be empty",
            ),
        ];
        for (rules, expected) in cases {
            let message = validation_error(rules);
            assert!(
                message.starts_with(expected),
                "expected {expected:?}, got {message:?}"
            );
        }
        // Valid forms.
        for action in [
            "*",
            "wallet.sign",
            "wallet.*",
            "*.delete",
            "*.*",
            "key_v2.rotate-now",
        ] {
            validate_rules(&[rule(action, "*", Effect::Allow)]).unwrap();
        }
        validate_rules(&[
            cond(ips(&[
                "10.0.0.0/8",
                "0.0.0.0/0",
                "192.0.2.1",
                "::/0",
                "2001:db8::/32",
                "::1",
            ])),
            cond(max_amount(&"9".repeat(78))),
            cond(window(Some(&DAY_NAMES), "22:00", "06:00")),
            rule(
                "*",
                "secret:production/payments/stripe?.v1_x-*",
                Effect::Deny,
            ),
        ])
        .unwrap();
        validate_rules(&vec![ok; 100]).unwrap();
    }

    #[test]
    fn invalid_stored_rule_fails_closed() {
        let broken = with(rule("wallet.sign", "*", Effect::Allow), ips(&["not-an-ip"]));
        let policies = vec![("p".to_owned(), vec![rule("*", "*", Effect::Allow), broken])];
        let d = evaluate(&policies, &facts("wallet.sign", "wallet:x"));
        match d {
            Decision::Deny {
                rule: Some(r),
                reason,
            } => {
                assert_eq!(r.rule_index, 1);
                assert!(reason.contains("invalid CIDR"), "{reason}");
            }
            other => panic!("expected deny, got {other:?}"),
        }
        // Not matching by action: ignored.
        let d = evaluate(&policies, &facts("wallet.read", "wallet:x"));
        assert!(matches!(d, Decision::Allow { .. }), "{d:?}");
        // require_approval without approvals: deny.
        let policies = vec![(
            "p".to_owned(),
            vec![Rule {
                approvals: None,
                ..rule("*", "*", Effect::RequireApproval)
            }],
        )];
        assert!(matches!(
            evaluate(&policies, &facts("wallet.read", "wallet:x")),
            Decision::Deny { rule: Some(_), .. }
        ));
    }
}
