//! The relay list, routes and their environment overrides: every form and every error.

use super::super::testutil::{env, err, parse};
use super::*;

/// A valid key, distinct for each `n`.
fn key(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

/// [`key`] as written in a config.
fn b64(n: u8) -> String {
    key(n).to_base64()
}

fn relay(address: &str, n: u8) -> RelayEntry {
    RelayEntry {
        address: address.into(),
        key: key(n),
        group: None,
        weight: 1,
    }
}

fn h(address: &str, n: u8) -> Hop {
    Hop {
        address: address.into(),
        key: key(n),
    }
}

/// The error `vars` give applied to the config `text`, checked to be one line.
fn env_error(text: &str, vars: &[(&str, &str)]) -> String {
    let mut c = parse(text).unwrap();
    let msg = c.apply_env(env(vars)).unwrap_err().to_string();
    assert!(!msg.contains('\n'), "error is not one line: {msg}");
    msg
}

/// `text` with `vars` applied.
fn with_env(text: &str, vars: &[(&str, &str)]) -> Config {
    let mut c = parse(text).unwrap();
    c.apply_env(env(vars)).unwrap();
    c
}

#[test]
fn one_relay_and_key_make_one_relay_of_weight_one() {
    let c = parse(&format!(
        "relay = \"10.0.0.1:7000\"\nrelay_key = \"{}\"",
        b64(1)
    ))
    .unwrap();
    assert_eq!(c.relays, [relay("10.0.0.1:7000", 1)]);
    assert!(c.routes.is_empty());
    assert_eq!(c.paths(), [vec![h("10.0.0.1:7000", 1)]]);
    assert_eq!(c.relay_without_key(), None);
}

#[test]
fn relay_and_relay_key_take_comma_separated_lists_in_order() {
    let c = parse(&format!(
        "relay = \"10.0.0.1:7000,relay-b.example:7000 ,  [::1]:7000\"\nrelay_key = \"{} , {},{}\"",
        b64(1),
        b64(2),
        b64(3)
    ))
    .unwrap();
    assert_eq!(
        c.relays,
        [
            relay("10.0.0.1:7000", 1),
            relay("relay-b.example:7000", 2),
            relay("[::1]:7000", 3)
        ]
    );
    assert_eq!(
        c.paths(),
        [
            vec![h("10.0.0.1:7000", 1)],
            vec![h("relay-b.example:7000", 2)],
            vec![h("[::1]:7000", 3)]
        ]
    );
}

#[test]
fn a_relay_without_its_key_or_a_key_without_its_relay_loads_for_the_client_to_report() {
    let c = parse("relay = \"10.0.0.1:7000\"").unwrap();
    assert!(c.relays.is_empty() && c.paths().is_empty());
    assert_eq!(c.relay_without_key(), Some("10.0.0.1:7000"));
    let c = parse(&format!("relay_key = \"{}\"", b64(1))).unwrap();
    assert!(c.relays.is_empty() && c.paths().is_empty());
    assert_eq!(c.relay_without_key(), None);
}

#[test]
fn relay_lists_of_different_lengths_are_refused() {
    assert_eq!(
        err(&format!(
            "relay = \"10.0.0.1:7000, 10.0.0.2:7000\"\nrelay_key = \"{}\"",
            b64(1)
        )),
        "config /etc/qnet/qnet.toml: relay_key: 1 key (relay_key) for 2 addresses (relay); give one key per relay, in the same order"
    );
    assert_eq!(
        err("relay = \"10.0.0.1:7000, 10.0.0.2:7000\""),
        "config /etc/qnet/qnet.toml: relay_key: 0 keys (relay_key) for 2 addresses (relay); give one key per relay, in the same order"
    );
    assert_eq!(
        err(&format!("relay_key = \"{}, {}\"", b64(1), b64(2))),
        "config /etc/qnet/qnet.toml: relay_key: 2 keys (relay_key) for 0 addresses (relay); give one key per relay, in the same order"
    );
}

#[test]
fn a_bad_item_of_a_relay_list_is_named_by_its_position() {
    assert!(err("relay = \"10.0.0.1:7000, nope\"").starts_with(
        "config /etc/qnet/qnet.toml: relay[1]: must be host:port, e.g. 127.0.0.1:7000"
    ));
    assert!(err("relay = \"10.0.0.1:7000,\"").starts_with(
        "config /etc/qnet/qnet.toml: relay[1]: must be host:port, e.g. 127.0.0.1:7000, relay.example.com:7000 or [::1]:7000 (got \"\")"
    ));
    assert_eq!(
        err(&format!("relay_key = \"{}, xx\"", b64(1))),
        "config /etc/qnet/qnet.toml: relay_key[1]: invalid key: expected 44 base64 characters, got 2"
    );
    // One value is named as before lists existed.
    assert!(
        err("relay_key = \"xx\"").starts_with("config /etc/qnet/qnet.toml: relay_key: invalid key")
    );
    assert_eq!(
        err("relay_key = 5"),
        "config /etc/qnet/qnet.toml: relay_key: expected a string, got integer"
    );
}

#[test]
fn a_relay_listed_twice_is_refused_naming_both_positions() {
    let keys = format!("relay_key = \"{}, {}, {}\"", b64(1), b64(2), b64(3));
    assert_eq!(
        err(&format!(
            "relay = \"Relay.Example:7000, 10.0.0.1:7000, relay.example:7000\"\n{keys}"
        )),
        "config /etc/qnet/qnet.toml: relay: relay.example:7000 is listed twice (relay[0] and relay[2])"
    );
    // One IPv6 address however written.
    assert!(
        err(&format!(
            "relay = \"[::1]:7000, [0:0::1]:7000, 10.0.0.1:7000\"\n{keys}"
        ))
        .contains("is listed twice (relay[0] and relay[1])")
    );
    // The same host at another port is another relay.
    assert!(
        parse(&format!(
            "relay = \"10.0.0.1:7000, 10.0.0.1:7001, 10.0.0.2:7000\"\n{keys}"
        ))
        .is_ok()
    );
    assert_eq!(
        err(&format!(
            "[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"\n[[relays]]\naddress = \"10.0.0.2:7000\"\nkey = \"{}\"\n[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"",
            b64(1),
            b64(2),
            b64(3)
        )),
        "config /etc/qnet/qnet.toml: relays: 10.0.0.1:7000 is listed twice (relays[0] and relays[2])"
    );
}

#[test]
fn relays_tables_carry_group_and_weight() {
    let c = parse(&format!(
        "[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"\ngroup = \"eu\"\nweight = 2\n\
         [[relays]]\naddress = \"[2001:db8::1]:7000\"\nkey = \"{}\"\nweight = 1000\n\
         [[relays]]\naddress = \"relay-c.example:443\"\nkey = \"{}\"\n",
        b64(1),
        b64(2),
        b64(3)
    ))
    .unwrap();
    assert_eq!(
        c.relays,
        [
            RelayEntry {
                group: Some("eu".into()),
                weight: 2,
                ..relay("10.0.0.1:7000", 1)
            },
            RelayEntry {
                weight: 1000,
                ..relay("[2001:db8::1]:7000", 2)
            },
            relay("relay-c.example:443", 3),
        ]
    );
    assert_eq!(c.paths().len(), 3);
    assert_eq!(c.relay_without_key(), None);
}

#[test]
fn relays_tables_are_checked_field_by_field() {
    let k = b64(1);
    let one = |extra: &str| err(&format!("[[relays]]\n{extra}"));
    for (extra, expect) in [
        (
            format!("key = \"{k}\""),
            "config /etc/qnet/qnet.toml: relays[0]: missing address".to_owned(),
        ),
        (
            "address = \"10.0.0.1:7000\"".to_owned(),
            "config /etc/qnet/qnet.toml: relays[0]: missing key".to_owned(),
        ),
        (
            "address = \"10.0.0.1:7000\"\nkey = \"xx\"".to_owned(),
            "config /etc/qnet/qnet.toml: relays[0].key: invalid key: expected 44 base64 characters, got 2".to_owned(),
        ),
        (
            format!("address = \"10.0.0.1\"\nkey = \"{k}\""),
            "config /etc/qnet/qnet.toml: relays[0].address: must be host:port, e.g. 127.0.0.1:7000, relay.example.com:7000 or [::1]:7000 (got \"10.0.0.1\")".to_owned(),
        ),
        (
            format!("address = \"10.0.0.1:7000\"\nkey = \"{k}\"\nweight = 0"),
            "config /etc/qnet/qnet.toml: relays[0].weight: must be 1 to 1000 (got 0)".to_owned(),
        ),
        (
            format!("address = \"10.0.0.1:7000\"\nkey = \"{k}\"\nweight = 1001"),
            "config /etc/qnet/qnet.toml: relays[0].weight: must be 1 to 1000 (got 1001)".to_owned(),
        ),
        (
            format!("address = \"10.0.0.1:7000\"\nkey = \"{k}\"\nweight = -1"),
            "config /etc/qnet/qnet.toml: relays[0].weight: must be 1 to 1000 (got -1)".to_owned(),
        ),
        (
            format!("address = \"10.0.0.1:7000\"\nkey = \"{k}\"\nweight = \"2\""),
            "config /etc/qnet/qnet.toml: relays[0].weight: expected an integer, got string".to_owned(),
        ),
        (
            format!("address = \"10.0.0.1:7000\"\nkey = \"{k}\"\ngroup = \" \""),
            "config /etc/qnet/qnet.toml: relays[0].group: must not be empty".to_owned(),
        ),
        (
            format!("address = \"10.0.0.1:7000\"\nkey = \"{k}\"\ngroup = 1"),
            "config /etc/qnet/qnet.toml: relays[0].group: expected a string, got integer".to_owned(),
        ),
    ] {
        assert_eq!(one(&extra), expect, "{extra}");
    }
    let msg = one(&format!(
        "address = \"10.0.0.1:7000\"\nkey = \"{k}\"\nport = 7000"
    ));
    assert!(
        msg.starts_with("config /etc/qnet/qnet.toml: line 4: "),
        "{msg}"
    );
    assert!(msg.contains("unknown field `port`"), "{msg}");
    let msg = err("relays = \"10.0.0.1:7000\"");
    assert!(
        msg.starts_with("config /etc/qnet/qnet.toml: line 1: "),
        "{msg}"
    );
}

#[test]
fn relay_or_relay_key_together_with_relays_tables_is_refused() {
    let table = format!(
        "[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"\n",
        b64(1)
    );
    let expect = "config /etc/qnet/qnet.toml: relays: not together with relay or relay_key: list every relay as a [[relays]] table";
    assert_eq!(err(&format!("relay = \"10.0.0.2:7000\"\n{table}")), expect);
    assert_eq!(err(&format!("relay_key = \"{}\"\n{table}", b64(2))), expect);
}

#[test]
fn routes_take_keys_from_the_relay_list_or_inline() {
    let c = parse(&format!(
        "[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"\n\
         [[relays]]\naddress = \"Relay-B.example:7000\"\nkey = \"{}\"\n\
         [[routes]]\nname = \"two-hop\"\nhops = [\"10.0.0.1:7000\", \"10.0.0.9:7000@{}\"]\n\
         [[routes]]\nhops = [\"relay-b.example:7000\", \" 10.0.0.1:7000 \", \"exit.example:7000@ {} \"]\n",
        b64(1),
        b64(2),
        b64(9),
        b64(8)
    ))
    .unwrap();
    assert_eq!(
        c.routes,
        [
            RouteConfig {
                name: Some("two-hop".into()),
                hops: vec![h("10.0.0.1:7000", 1), h("10.0.0.9:7000", 9)],
            },
            RouteConfig {
                name: None,
                hops: vec![
                    h("relay-b.example:7000", 2),
                    h("10.0.0.1:7000", 1),
                    h("exit.example:7000", 8)
                ],
            },
        ]
    );
    // The routes are the paths; the relays alone are not.
    assert_eq!(
        c.paths(),
        [c.routes[0].hops.clone(), c.routes[1].hops.clone()]
    );
}

#[test]
fn routes_name_relays_of_a_relay_list_too() {
    let c = parse(&format!(
        "relay = \"10.0.0.1:7000, 10.0.0.2:7000\"\nrelay_key = \"{}, {}\"\n[[routes]]\nhops = [\"10.0.0.2:7000\", \"10.0.0.1:7000\"]\n",
        b64(1),
        b64(2)
    ))
    .unwrap();
    assert_eq!(
        c.paths(),
        [vec![h("10.0.0.2:7000", 2), h("10.0.0.1:7000", 1)]]
    );
}

#[test]
fn ipv6_hops_split_at_the_last_at_sign() {
    let c = parse(&format!(
        "[[relays]]\naddress = \"[2001:db8::1]:7000\"\nkey = \"{}\"\n\
         [[routes]]\nhops = [\"[2001:DB8:0::1]:7000\", \"[::1]:7000@{}\"]\n",
        b64(1),
        b64(2)
    ))
    .unwrap();
    assert_eq!(
        c.paths(),
        [vec![h("[2001:DB8:0::1]:7000", 1), h("[::1]:7000", 2)]]
    );
}

#[test]
fn a_route_has_two_or_three_hops() {
    let (k1, k2, k3, k4) = (b64(1), b64(2), b64(3), b64(4));
    for (hops, n) in [
        ("[]".to_owned(), 0),
        (format!("[\"10.0.0.1:7000@{k1}\"]"), 1),
        (
            format!(
                "[\"10.0.0.1:7000@{k1}\", \"10.0.0.2:7000@{k2}\", \"10.0.0.3:7000@{k3}\", \"10.0.0.4:7000@{k4}\"]"
            ),
            4,
        ),
    ] {
        assert_eq!(
            err(&format!("[[routes]]\nhops = {hops}")),
            format!(
                "config /etc/qnet/qnet.toml: routes[0].hops: a route has 2 or 3 hops (entry first, exit last); got {n}"
            )
        );
    }
    let three = format!(
        "[[routes]]\nhops = [\"10.0.0.1:7000@{k1}\", \"10.0.0.2:7000@{k2}\", \"10.0.0.3:7000@{k3}\"]"
    );
    assert_eq!(parse(&three).unwrap().paths()[0].len(), 3);
}

#[test]
fn a_route_through_one_relay_twice_is_a_loop() {
    let (k1, k2, k3) = (b64(1), b64(2), b64(3));
    assert_eq!(
        err(&format!(
            "[[routes]]\nhops = [\"a.example:7000@{k1}\", \"10.0.0.2:7000@{k2}\", \"A.example:7000@{k3}\"]"
        )),
        "config /etc/qnet/qnet.toml: routes[0].hops: routes[0].hops[0] and routes[0].hops[2] are the same relay (A.example:7000); a route must not pass a relay twice"
    );
    assert_eq!(
        err(&format!(
            "[[routes]]\nhops = [\"10.0.0.1:7000@{k1}\", \"10.0.0.2:7000@{k1}\"]"
        )),
        "config /etc/qnet/qnet.toml: routes[0].hops: routes[0].hops[0] and routes[0].hops[1] have the same key; a route must not pass a relay twice"
    );
}

#[test]
fn a_hop_needs_a_key_inline_or_from_the_relay_list() {
    let k1 = b64(1);
    assert_eq!(
        err(&format!(
            "relay = \"10.0.0.1:7000\"\nrelay_key = \"{k1}\"\n[[routes]]\nhops = [\"10.0.0.1:7000\", \"10.0.0.2:7000\"]"
        )),
        "config /etc/qnet/qnet.toml: routes[0].hops[1]: unknown key for hop 10.0.0.2:7000: write HOST:PORT@KEY or list it in [[relays]]"
    );
    // A relay without its key gives none to a hop either.
    assert!(
        err("relay = \"10.0.0.1:7000\"\n[[routes]]\nhops = [\"10.0.0.1:7000\", \"10.0.0.2:7000\"]")
            .contains("routes[0].hops[0]: unknown key for hop 10.0.0.1:7000")
    );
    assert_eq!(
        err(&format!(
            "[[routes]]\nhops = [\"10.0.0.1:7000@{k1}\", \"10.0.0.2:7000@xx\"]"
        )),
        "config /etc/qnet/qnet.toml: routes[0].hops[1]: invalid key: expected 44 base64 characters, got 2"
    );
    assert_eq!(
        err(&format!(
            "[[routes]]\nhops = [\"10.0.0.1:7000@{k1}\", \"10.0.0.2:7000@\"]"
        )),
        "config /etc/qnet/qnet.toml: routes[0].hops[1]: invalid key: empty"
    );
    assert!(
        err(&format!(
            "[[routes]]\nhops = [\"10.0.0.1@{k1}\", \"10.0.0.2:7000@{k1}\"]"
        ))
        .starts_with("config /etc/qnet/qnet.toml: routes[0].hops[0]: must be host:port")
    );
}

#[test]
fn routes_tables_are_checked_field_by_field() {
    let k1 = b64(1);
    let k2 = b64(2);
    let hops = format!("hops = [\"10.0.0.1:7000@{k1}\", \"10.0.0.2:7000@{k2}\"]");
    assert_eq!(
        err("[[routes]]\nname = \"x\""),
        "config /etc/qnet/qnet.toml: routes[0]: missing hops"
    );
    assert_eq!(
        err(&format!("[[routes]]\nname = \"\"\n{hops}")),
        "config /etc/qnet/qnet.toml: routes[0].name: must not be empty"
    );
    assert_eq!(
        err("[[routes]]\nhops = \"10.0.0.1:7000\""),
        "config /etc/qnet/qnet.toml: routes[0].hops: expected an array, got string"
    );
    assert_eq!(
        err(&format!(
            "[[routes]]\n{hops}\n[[routes]]\nhops = [\"10.0.0.1:7000@{k1}\", 7]"
        )),
        "config /etc/qnet/qnet.toml: routes[1].hops[1]: expected a string, got integer"
    );
    let msg = err(&format!("[[routes]]\n{hops}\nexit = \"x\""));
    assert!(
        msg.starts_with("config /etc/qnet/qnet.toml: line 3: "),
        "{msg}"
    );
    assert!(msg.contains("unknown field `exit`"), "{msg}");
}

#[test]
fn env_lists_replace_the_files_relays() {
    let file = format!(
        "[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"\ngroup = \"eu\"\nweight = 5\n",
        b64(1)
    );
    let keys = format!("{} ,{}", b64(2), b64(3));
    let c = with_env(
        &file,
        &[
            ("QNET_RELAY", "10.0.0.2:7000 , [::1]:7000"),
            ("QNET_RELAY_KEY", &keys),
        ],
    );
    assert_eq!(
        c.relays,
        [relay("10.0.0.2:7000", 2), relay("[::1]:7000", 3)]
    );
}

#[test]
fn env_keys_alone_pair_with_the_files_addresses() {
    let file = format!(
        "relay = \"10.0.0.1:7000, 10.0.0.2:7000\"\nrelay_key = \"{}, {}\"",
        b64(1),
        b64(2)
    );
    let keys = format!("{},{}", b64(3), b64(4));
    let c = with_env(&file, &[("QNET_RELAY_KEY", &keys)]);
    assert_eq!(
        c.relays,
        [relay("10.0.0.1:7000", 3), relay("10.0.0.2:7000", 4)]
    );
    // A file's relay without its key takes its key from the environment.
    let k = b64(5);
    let c = with_env("relay = \"10.0.0.1:7000\"", &[("QNET_RELAY_KEY", &k)]);
    assert_eq!(c.relays, [relay("10.0.0.1:7000", 5)]);
    assert_eq!(c.relay_without_key(), None);
    // Rebuilt from the environment, an entry has no group and weight 1.
    let file = format!(
        "[[relays]]\naddress = \"10.0.0.1:7000\"\nkey = \"{}\"\ngroup = \"eu\"\nweight = 5\n",
        b64(1)
    );
    let c = with_env(&file, &[("QNET_RELAY_KEY", &k)]);
    assert_eq!(c.relays, [relay("10.0.0.1:7000", 5)]);
}

#[test]
fn env_addresses_alone_pair_with_the_files_keys() {
    let c = with_env(
        &format!("relay_key = \"{}\"", b64(1)),
        &[("QNET_RELAY", "10.0.0.9:7000")],
    );
    assert_eq!(c.relays, [relay("10.0.0.9:7000", 1)]);
    // No key anywhere: the client reports it, as before.
    let c = with_env("", &[("QNET_RELAY", "10.0.0.9:7000")]);
    assert!(c.relays.is_empty());
    assert_eq!(c.relay_without_key(), Some("10.0.0.9:7000"));
}

#[test]
fn env_lists_of_different_lengths_name_both_variables_and_counts() {
    let keys = format!("{},{}", b64(1), b64(2));
    assert_eq!(
        env_error(
            "",
            &[
                ("QNET_RELAY", "10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000"),
                ("QNET_RELAY_KEY", &keys)
            ]
        ),
        "environment variable QNET_RELAY_KEY: 2 keys (QNET_RELAY_KEY) for 3 addresses (QNET_RELAY); give one key per relay, in the same order"
    );
    let file = format!("relay = \"10.0.0.1:7000\"\nrelay_key = \"{}\"", b64(1));
    assert_eq!(
        env_error(&file, &[("QNET_RELAY_KEY", &keys)]),
        "environment variable QNET_RELAY_KEY: 2 keys (QNET_RELAY_KEY) for 1 address (the config file's; QNET_RELAY is unset); give one key per relay, in the same order"
    );
    assert_eq!(
        env_error(&file, &[("QNET_RELAY", "10.0.0.1:7000, 10.0.0.2:7000")]),
        "environment variable QNET_RELAY: 1 key (the config file's; QNET_RELAY_KEY is unset) for 2 addresses (QNET_RELAY); give one key per relay, in the same order"
    );
}

#[test]
fn env_list_items_are_checked_like_the_files() {
    assert!(
        env_error("", &[("QNET_RELAY", "10.0.0.1:7000, nope")])
            .starts_with("environment variable QNET_RELAY[1]: must be host:port")
    );
    assert_eq!(
        env_error("", &[("QNET_RELAY", "10.0.0.1:7000, 10.0.0.1:7000")]),
        "environment variable QNET_RELAY: 10.0.0.1:7000 is listed twice (QNET_RELAY[0] and QNET_RELAY[1])"
    );
    let keys = format!("{}, xx", b64(1));
    assert!(
        env_error("", &[("QNET_RELAY_KEY", &keys)])
            .starts_with("environment variable QNET_RELAY_KEY[1]: invalid key")
    );
}

#[test]
fn qnet_hops_replaces_the_files_routes_with_one_route() {
    let file = format!(
        "relay = \"10.0.0.1:7000\"\nrelay_key = \"{}\"\n[[routes]]\nhops = [\"10.0.0.1:7000\", \"10.0.0.2:7000@{}\"]\n",
        b64(1),
        b64(2)
    );
    let hops = format!(
        "[::1]:7000@{} , 10.0.0.1:7000,10.0.0.3:7000@{}",
        b64(7),
        b64(3)
    );
    let c = with_env(&file, &[("QNET_HOPS", &hops)]);
    assert_eq!(
        c.routes,
        [RouteConfig {
            name: None,
            hops: vec![
                h("[::1]:7000", 7),
                h("10.0.0.1:7000", 1),
                h("10.0.0.3:7000", 3)
            ],
        }]
    );
    assert_eq!(c.paths(), [c.routes[0].hops.clone()]);
}

#[test]
fn qnet_hops_names_relays_of_the_final_relay_list() {
    let keys = format!("{},{}", b64(1), b64(2));
    let c = with_env(
        "",
        &[
            ("QNET_RELAY", "10.0.0.1:7000,10.0.0.2:7000"),
            ("QNET_RELAY_KEY", &keys),
            ("QNET_HOPS", "10.0.0.2:7000, 10.0.0.1:7000"),
        ],
    );
    assert_eq!(
        c.paths(),
        [vec![h("10.0.0.2:7000", 2), h("10.0.0.1:7000", 1)]]
    );
}

#[test]
fn qnet_hops_errors_name_the_variable() {
    let k = b64(1);
    assert_eq!(
        env_error("", &[("QNET_HOPS", &format!("10.0.0.1:7000@{k}"))]),
        "environment variable QNET_HOPS: a route has 2 or 3 hops (entry first, exit last); got 1"
    );
    assert_eq!(
        env_error(
            "",
            &[("QNET_HOPS", &format!("10.0.0.1:7000@{k}, 10.0.0.2:7000"))]
        ),
        "environment variable QNET_HOPS[1]: unknown key for hop 10.0.0.2:7000: write HOST:PORT@KEY or list it in [[relays]]"
    );
    assert!(
        env_error(
            "",
            &[(
                "QNET_HOPS",
                &format!("10.0.0.1:7000@{k}, 10.0.0.2:7000@{k}")
            )]
        )
        .contains("QNET_HOPS: QNET_HOPS[0] and QNET_HOPS[1] have the same key")
    );
}

#[test]
fn paths_are_the_relays_alone_when_no_route_is_configured() {
    let c = with_env(
        "",
        &[
            ("QNET_RELAY", "10.0.0.1:7000, 10.0.0.2:7000"),
            ("QNET_RELAY_KEY", &format!("{}, {}", b64(1), b64(2))),
        ],
    );
    assert_eq!(
        c.paths(),
        [vec![h("10.0.0.1:7000", 1)], vec![h("10.0.0.2:7000", 2)]]
    );
    assert!(Config::default().paths().is_empty());
}
