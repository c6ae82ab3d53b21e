//! Validation of a policy's rules before they are stored (see the module
//! documentation of [`super`] for what each field means).

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use super::conditions::{parse_cidr, parse_day, parse_hhmm};
use super::{
    Effect, PolicyError, Rule, APPROVAL_ROLES, MAX_ACTION_LEN, MAX_AMOUNT_DIGITS, MAX_APPROVALS,
    MAX_DESTINATION_LEN, MAX_LIST_LEN, MAX_RESOURCE_LEN, MAX_RULES, PAYLOAD_KINDS,
};

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

pub(super) fn validate_rule(index: usize, rule: &Rule) -> Result<(), PolicyError> {
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
