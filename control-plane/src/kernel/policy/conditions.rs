//! Conditions: three-valued truth over the request's facts (an unknown
//! fact never allows what a condition would refuse), decimal amounts of any
//! length, CIDR lists, time windows in UTC.

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

use super::{
    Conditions, Effect, Movement, RequestFacts, Rule, TimeWindow, ValueFacts, DAY_NAMES,
    NATIVE_ASSET,
};

/// Compares two decimal integers (ASCII digits, any length, leading zeros
/// allowed). Returns `None` when either is not a decimal integer.
pub(super) fn compare_decimal(a: &str, b: &str) -> Option<Ordering> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    Some(a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Parses `addr/prefix` or a bare address (a /32 or /128). Host bits below
/// the prefix are ignored.
pub(super) fn parse_cidr(text: &str) -> Option<Cidr> {
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

pub(super) fn v6_contains(net: Ipv6Addr, prefix: u8, ip: Ipv6Addr) -> bool {
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
pub(super) fn parse_hhmm(text: &str) -> Option<u32> {
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
pub(super) fn parse_day(text: &str) -> Option<u8> {
    DAY_NAMES
        .iter()
        .position(|d| *d == text)
        .and_then(|i| u8::try_from(i).ok())
}

/// UTC weekday (Monday = 0) and minute of day of a Unix time.
pub(super) fn weekday_and_minute(unix_seconds: i64) -> (u8, u32) {
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
pub(super) fn window_holds(window: &TimeWindow, unix_seconds: i64) -> Option<bool> {
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

pub(super) fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// The value of a condition: it holds, it does not, or a fact it needs is
/// unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Truth {
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
pub(super) fn add_decimal(a: &str, b: &str) -> String {
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
pub(super) fn all(truths: impl Iterator<Item = Truth>) -> Truth {
    truths.fold(Truth::True, Truth::and)
}

/// Per-asset totals of the in-scope movements.
pub(super) struct Totals {
    /// (asset, total) of each in-scope asset with known amounts.
    sums: Vec<(String, String)>,
    /// A movement's asset, or an in-scope amount, is unknown.
    unknown: bool,
    /// A movement of an asset outside the scope.
    out_of_scope: bool,
}

pub(super) fn totals(movements: &[Movement], scope: &[String]) -> Totals {
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

pub(super) fn max_amount_truth(max: &str, scope: &[String], value: &ValueFacts) -> Truth {
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

pub(super) fn min_amount_truth(min: &str, scope: &[String], value: &ValueFacts) -> Truth {
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
pub(super) fn any(truths: impl Iterator<Item = Truth>) -> Truth {
    truths.fold(Truth::False, |found, truth| match (found, truth) {
        (Truth::True, _) | (_, Truth::True) => Truth::True,
        (Truth::Unknown, _) | (_, Truth::Unknown) => Truth::Unknown,
        (Truth::False, Truth::False) => Truth::False,
    })
}

/// Whether movements' fields (asset or destination) are listed: *every*
/// movement's for a permissive rule (each movement must be allowed),
/// *some* movement's for a deny (one forbidden movement is enough).
pub(super) fn listed_truth(
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
pub(super) fn conditions_truth(
    conditions: &Conditions,
    effect: Effect,
    facts: &RequestFacts,
) -> Truth {
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
pub(super) fn rule_applies(rule: &Rule, facts: &RequestFacts) -> bool {
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
