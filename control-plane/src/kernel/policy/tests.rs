use super::conditions::{add_decimal, weekday_and_minute};
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
    let below = "115792089237316195423570985008687907853269984665640564039457584007913129639934";
    let above = "115792089237316195423570985008687907853269984665640564039457584007913129639936";
    let longer = "1000000000000000000000000000000000000000000000000000000000000000000000000000000";
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
        let error = validate_rules(&[with(rule("*", "*", Effect::Allow), conditions)]).unwrap_err();
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

#[test]
fn an_action_without_a_kind_takes_its_resources_kind() {
    let mut rules: Vec<Rule> = [
        ("sign", "key:treasury-*"),
        ("export", "*"),
        ("read", "k*:x"),
        ("*", "wallet:*"),
        ("wallet.sign", "wallet:*"),
        ("read", "secret:prod/db"),
    ]
    .into_iter()
    .map(|(action, resource)| rule(action, resource, Effect::Allow))
    .collect();
    normalize_rules(&mut rules);
    let actions: Vec<&str> = rules.iter().map(|rule| rule.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "key.sign",
            "*.export",
            "*.read",
            "*",
            "wallet.sign",
            "secret.read"
        ]
    );
    validate_rules(&rules).unwrap();
}

#[test]
fn the_seed_rule_shape_reads_with_numbers_and_no_effect() {
    let rule: Rule = serde_json::from_value(serde_json::json!({
        "action": "sign",
        "resource": "key:treasury-*",
        "conditions": {"requireMFA": true, "maxAmount": 1_000_000, "minAmount": "5", "allowedIPs": ["10.0.0.0/8"]}
    }))
    .unwrap();
    assert_eq!(rule.effect, Effect::Allow);
    let conditions = rule.conditions.unwrap();
    assert_eq!(conditions.max_amount.as_deref(), Some("1000000"));
    assert_eq!(conditions.min_amount.as_deref(), Some("5"));
    for refused in [
        serde_json::json!(9_007_199_254_740_992_u64),
        serde_json::json!(1.5),
        serde_json::json!(-3),
    ] {
        let parsed: Result<Rule, _> = serde_json::from_value(serde_json::json!({
            "action": "sign", "resource": "*", "conditions": {"maxAmount": refused}
        }));
        assert!(parsed.is_err(), "{refused}");
    }
    let exact: Rule = serde_json::from_value(serde_json::json!({
        "action": "sign", "resource": "*", "conditions": {"maxAmount": MAX_SAFE_INTEGER}
    }))
    .unwrap();
    assert_eq!(
        exact.conditions.unwrap().max_amount.as_deref(),
        Some("9007199254740991")
    );
}
