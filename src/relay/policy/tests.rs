//! The exit policy's rule syntax, its default and its checks.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rule(s: &str) -> ExitRule {
    ExitRule::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn parse_ipv4_rules() {
    let r = rule("10.0.0.0/8:80,443,8000-8100");
    assert_eq!(
        r.target(),
        ExitTarget::Net(Cidr::new(ip("10.0.0.0"), 8).unwrap())
    );
    assert_eq!(
        r.ports(),
        [
            PortRange::new(80, 80).unwrap(),
            PortRange::new(443, 443).unwrap(),
            PortRange::new(8000, 8100).unwrap()
        ]
    );
    let bare = rule("192.0.2.7");
    assert_eq!(
        bare.target(),
        ExitTarget::Net(Cidr::new(ip("192.0.2.7"), 32).unwrap())
    );
    assert!(bare.ports().is_empty());
    let host_port = rule("192.0.2.7:22");
    assert_eq!(host_port.target(), bare.target());
    assert_eq!(host_port.ports(), [PortRange::new(22, 22).unwrap()]);
    assert!(rule(" 0.0.0.0/0 ").ports().is_empty());
}

#[test]
fn parse_ipv6_rules() {
    let loopback = ExitTarget::Net(Cidr::new(ip("::1"), 128).unwrap());
    for text in ["::1/128", "::1", "[::1]", "[::1]/128"] {
        let r = rule(text);
        assert_eq!(r.target(), loopback, "{text}");
        assert!(r.ports().is_empty(), "{text}");
    }
    for text in ["[::1]/128:22", "[::1]:22", "::1/128:22"] {
        let r = rule(text);
        assert_eq!(r.target(), loopback, "{text}");
        assert_eq!(r.ports(), [PortRange::new(22, 22).unwrap()], "{text}");
    }
    let r = rule("2001:db8::/32:443");
    assert_eq!(
        r.target(),
        ExitTarget::Net(Cidr::new(ip("2001:db8::"), 32).unwrap())
    );
    // IPv4-mapped blocks become IPv4.
    assert_eq!(
        rule("::ffff:10.0.0.0/104").target(),
        ExitTarget::Net(Cidr::new(ip("10.0.0.0"), 8).unwrap())
    );
}

#[test]
fn parse_global_rules() {
    assert_eq!(rule("global").target(), ExitTarget::Global);
    let r = rule("GLOBAL:80,443");
    assert_eq!(r.target(), ExitTarget::Global);
    assert_eq!(r.ports().len(), 2);
}

#[test]
fn parse_errors() {
    for bad in [
        "",
        "   ",
        "10.0.0.0/33",
        "::/129",
        "10.0.0.1/8",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0.0/8:",
        "10.0.0.0/8:0",
        "10.0.0.0/8:65536",
        "10.0.0.0/8:80,",
        "10.0.0.0/8:100-90",
        "10.0.0.0/8:http",
        "10.0.0.0/8:+80",
        "10.0.0.0.0",
        "example.com:80",
        "[10.0.0.1]:80",
        "[::1",
        "[::1]x",
        "[::1]/:22",
        "::1:22:",
        "fe80::1%eth0",
        "global/8",
        "[global]",
    ] {
        let err = ExitRule::parse(bad).unwrap_err();
        assert_eq!(err.rule, bad);
        let msg = err.to_string();
        assert!(msg.starts_with("invalid exit rule "), "{msg}");
        assert!(!msg.contains('\n'));
    }
    let msg = ExitRule::parse("10.0.0.1/8").unwrap_err().to_string();
    assert!(msg.contains("10.0.0.0/8"), "{msg}");
    // A bare IPv6 address with a trailing group is an address, not a port.
    assert!(rule("::1:22").ports().is_empty());
}

#[test]
fn parse_errors_say_which_fault() {
    let fault = |r: &str| ExitRule::parse(r).unwrap_err().reason;
    assert_eq!(fault(""), RuleFault::Empty);
    assert_eq!(fault("10.0.0.0/8:0"), RuleFault::PortZero);
    assert_eq!(fault("10.0.0.0/8:100-90"), RuleFault::Backwards(100, 90));
    assert_eq!(fault("10.0.0.0/8:http"), RuleFault::NotAPort("http".into()));
    assert_eq!(fault("::1:22:"), RuleFault::NeedsBrackets);
    assert!(matches!(fault("10.0.0.1/8"), RuleFault::Block(_)));
    assert_eq!(
        ExitRule::parse("10.0.0.0/8:65536").unwrap_err().to_string(),
        "invalid exit rule \"10.0.0.0/8:65536\": port 65536 is larger than 65535"
    );
}

#[test]
fn display_round_trips() {
    for (text, shown) in [
        ("10.0.0.0/8:80,443,8000-8100", "10.0.0.0/8:80,443,8000-8100"),
        ("192.0.2.7", "192.0.2.7/32"),
        ("192.0.2.7:22", "192.0.2.7/32:22"),
        ("::1", "::1/128"),
        ("[::1]:22", "[::1]/128:22"),
        ("::1/128:22", "[::1]/128:22"),
        ("::/0", "::/0"),
        ("global:443", "global:443"),
        ("global", "global"),
        ("::ffff:10.0.0.0/104:1-2", "10.0.0.0/8:1-2"),
    ] {
        let r = rule(text);
        assert_eq!(r.to_string(), shown, "{text}");
        assert_eq!(rule(shown), r, "{shown}");
    }
}

#[test]
fn rule_matching() {
    let r = rule("10.0.0.0/8:80,443,8000-8100");
    let policy = ExitPolicy::from_rules(vec![r]);
    assert!(policy.allows(ip("10.1.2.3"), 80));
    assert!(policy.allows(ip("10.255.255.255"), 8050));
    assert!(policy.allows(ip("::ffff:10.1.2.3"), 443));
    assert!(!policy.allows(ip("10.1.2.3"), 22));
    assert!(!policy.allows(ip("11.0.0.1"), 80));
    assert!(!policy.allows(ip("8.8.8.8"), 443));
    assert!(!policy.allows(ip("::1"), 80));

    let all_ports = ExitPolicy::from_rules(vec![rule("192.0.2.7")]);
    assert!(all_ports.allows(ip("192.0.2.7"), 1));
    assert!(all_ports.allows(ip("192.0.2.7"), 65535));
    assert!(!all_ports.allows(ip("192.0.2.7"), 0));
    assert!(!all_ports.allows(ip("192.0.2.8"), 1));

    let v6 = ExitPolicy::from_rules(vec![rule("[::1]/128:22"), rule("2001:db8::/32")]);
    assert!(v6.allows(ip("::1"), 22));
    assert!(!v6.allows(ip("::1"), 23));
    assert!(v6.allows(ip("2001:db8:ffff::1"), 9));
    assert!(!v6.allows(ip("127.0.0.1"), 22));

    let everything = ExitPolicy::from_rules(vec![rule("0.0.0.0/0"), rule("::/0")]);
    assert!(everything.allows(ip("127.0.0.1"), 22));
    assert!(everything.allows(ip("::1"), 22));
    assert!(!everything.allows(ip("::1"), 0));

    assert!(!ExitPolicy::from_rules(vec![]).allows(ip("8.8.8.8"), 443));
}

#[test]
fn global_rule_keeps_default_protection() {
    let p = ExitPolicy::from_rules(vec![rule("global:80,443")]);
    assert!(p.allows(ip("8.8.8.8"), 443));
    assert!(p.allows(ip("2606:4700::1111"), 80));
    assert!(!p.allows(ip("8.8.8.8"), 22));
    assert!(!p.allows(ip("127.0.0.1"), 443));
    assert!(!p.allows(ip("192.168.1.1"), 80));
    assert!(!p.allows(ip("::ffff:192.168.1.1"), 80));
}

const DENIED: &[&str] = &[
    // IPv4
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "10.255.255.255",
    "100.64.0.1",
    "100.127.255.255",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.1",
    "192.0.0.8",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.0.1",
    "192.168.255.255",
    "198.18.0.1",
    "198.19.255.255",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    // IPv6
    "::",
    "::1",
    "::2",
    "::127.0.0.1",
    "100::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "febf::1",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "64:ff9b:1::1",
    "5f00::1",
    "2001::1",
    "2001:2::1",
    "2001:20::1",
    "2001:1::3",
    "2001:db8::1",
    "2002:c000:204::1",
    "3fff::1",
    "3fff:fff::1",
    "4000::1",
    "1fff:ffff::1",
    // IPv4-mapped and NAT64 forms of denied IPv4
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:0.0.0.0",
    "::ffff:255.255.255.255",
    "::ffff:100.64.0.1",
    "::ffff:224.0.0.1",
    "64:ff9b::127.0.0.1",
    "64:ff9b::10.0.0.1",
    "64:ff9b::192.168.1.1",
];

const ALLOWED: &[&str] = &[
    "1.1.1.1",
    "8.8.8.8",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.1",
    "169.253.255.255",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.0.9",
    "192.0.0.10",
    "192.0.1.1",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2a00:1450::1",
    "2001:200::1",
    "2001:1::1",
    "2001:1::2",
    "2001:3::1",
    "2001:4:112::1",
    "2001:db7:ffff::1",
    "2001:db9::1",
    "2003::1",
    "3ffe::1",
    "3fff:1000::1",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",
];

#[test]
fn default_policy() {
    let p = ExitPolicy::default();
    assert_eq!(p.rules(), None);
    for s in DENIED {
        assert!(!is_global_unicast(ip(s)), "{s} should be denied");
        for port in [1, 22, 80, 443, 65535] {
            assert!(!p.allows(ip(s), port), "{s}:{port} should be denied");
        }
    }
    for s in ALLOWED {
        assert!(is_global_unicast(ip(s)), "{s} should be allowed");
        for port in [1, 22, 80, 443, 65535] {
            assert!(p.allows(ip(s), port), "{s}:{port} should be allowed");
        }
        assert!(!p.allows(ip(s), 0), "{s}:0 should be denied");
    }
}

#[test]
fn from_exit_allow() {
    let empty: [&str; 0] = [];
    assert_eq!(
        ExitPolicy::from_exit_allow(&empty).unwrap(),
        ExitPolicy::default()
    );
    let p = ExitPolicy::from_exit_allow(&["127.0.0.1:8080", "global:443"]).unwrap();
    assert!(p.allows(ip("127.0.0.1"), 8080));
    assert!(p.allows(ip("8.8.8.8"), 443));
    assert!(!p.allows(ip("8.8.8.8"), 80));
    let err = ExitPolicy::from_exit_allow(&["global", "nope"]).unwrap_err();
    assert_eq!(err.rule, "nope");
}

#[test]
fn policy_display() {
    assert_eq!(
        ExitPolicy::default().to_string(),
        "default (globally routable unicast addresses but this host's own, all ports)"
    );
    assert_eq!(
        ExitPolicy::default().allowing_own_addrs().to_string(),
        "default (globally routable unicast addresses, all ports)"
    );
    assert_eq!(
        ExitPolicy::from_rules(vec![]).to_string(),
        "nothing allowed"
    );
    let p = ExitPolicy::from_exit_allow(&["10.0.0.0/8:80", "[::1]:22"]).unwrap();
    assert_eq!(p.to_string(), "allow 10.0.0.0/8:80, [::1]/128:22");
}

#[test]
fn ports_alone_for_names_sent_to_a_proxy() {
    let p = ExitPolicy::from_exit_allow(&["10.0.0.0/8:80,443", "global:22"]).unwrap();
    assert!(p.allows_port(80) && p.allows_port(22));
    assert!(!p.allows_port(8080) && !p.allows_port(0));
    assert!(
        ExitPolicy::from_exit_allow::<&str>(&[])
            .unwrap()
            .allows_port(8080)
    );
    assert!(!ExitPolicy::from_rules(vec![]).allows_port(80));
}

#[test]
fn cidr_edges() {
    let all4 = Cidr::new(ip("0.0.0.0"), 0).unwrap();
    assert!(all4.contains(ip("255.255.255.255")));
    assert!(!all4.contains(ip("::1")));
    let all6 = Cidr::new(ip("::"), 0).unwrap();
    assert!(all6.contains(ip("ffff::1")));
    assert!(!all6.contains(ip("1.2.3.4")));
    assert!(
        Cidr::new(ip("1.2.3.4"), 32)
            .unwrap()
            .contains(ip("1.2.3.4"))
    );
    assert!(Cidr::new(ip("1.2.3.5"), 31).is_err());
    assert!(Cidr::new(ip("1.2.3.4"), 31).is_ok());
    assert!(PortRange::new(0, 5).is_err());
    assert!(PortRange::new(6, 5).is_err());
}

fn name(host: &str, port: u16) -> Destination {
    Destination::Name(host.to_owned(), port)
}

fn addr(a: &str) -> Destination {
    Destination::Addr(a.parse().unwrap())
}

/// Issue 12: with a SOCKS5 exit, `127.0.0.1`, `2130706433`, `localhost` and
/// `169.254.169.254` were checked by port only and reached the proxy's loopback, LAN or
/// cloud metadata.
#[test]
fn socks_exit_names_that_are_addresses_are_checked_as_addresses() {
    let default = ExitPolicy::default();
    for host in [
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "0177.0.0.1",
        "127.1",
        "0xA9.0376.43518",
        "169.254.169.254",
        "10.1",
        "0",
        "1.2.3.4.5",
        "example.999",
    ] {
        for via_proxy in [true, false] {
            let (_, ok) = default.judge(name(host, 80), via_proxy);
            assert!(!ok, "{host} allowed (via proxy: {via_proxy})");
        }
    }
    // Loopback by name: refused for the proxy; resolved here, checked once resolved.
    for host in ["localhost", "db.localhost.", "LOCALHOST"] {
        assert!(!default.judge(name(host, 80), true).1, "{host}");
    }
    // An allowed literal is handed on as the address it means, not as the name.
    assert_eq!(
        default.judge(name("0x08080808", 53), true),
        (addr("8.8.8.8:53"), true)
    );
    assert_eq!(
        default.judge(name("134744072.", 53), false),
        (addr("8.8.8.8:53"), true)
    );
    // Names stay names: unresolved to the proxy (port-checked), resolved here otherwise.
    assert_eq!(
        default.judge(name("example.com", 443), true),
        (name("example.com", 443), true)
    );
    let ports = ExitPolicy::from_exit_allow(&["global:443"]).unwrap();
    assert!(!ports.judge(name("example.com", 80), true).1);
    assert!(
        ports.judge(name("example.com", 80), false).1,
        "checked once resolved"
    );
    // Loopback by name through a proxy: only where both loopback addresses are allowed.
    let v4_only = ExitPolicy::from_exit_allow(&["127.0.0.0/8"]).unwrap();
    assert!(!v4_only.judge(name("localhost", 80), true).1);
    let both = ExitPolicy::from_exit_allow(&["127.0.0.0/8", "[::1]/128"]).unwrap();
    assert_eq!(
        both.judge(name("app.localhost", 80), true),
        (name("localhost", 80), true)
    );
    // Resolved here, localhost is checked address by address after the lookup.
    assert!(both.judge(name("localhost", 80), false).1);
    assert_eq!(
        both.judge(name("2130706433", 80), true),
        (addr("127.0.0.1:80"), true)
    );
}

/// Issue 12: the default policy let clients reach services on the relay host's own
/// public address over `lo`, past the host firewall.
#[test]
fn own_addresses_are_refused_by_default_and_by_global() {
    let own = [ip("203.0.114.7"), ip("2a01:4f8::7"), ip("::ffff:11.0.0.1")];
    let mut default = ExitPolicy::default();
    let mut global = ExitPolicy::from_exit_allow(&["global:443"]).unwrap();
    let mut explicit = ExitPolicy::from_exit_allow(&["203.0.114.0/24", "11.0.0.1"]).unwrap();
    for p in [&default, &global] {
        assert!(p.refuses_own_addrs());
        assert!(p.allows(ip("203.0.114.7"), 443), "unknown until read");
    }
    for p in [&mut default, &mut global, &mut explicit] {
        p.set_own_addrs(own);
    }
    for p in [&default, &global] {
        for a in [
            "203.0.114.7",
            "::ffff:203.0.114.7",
            "2a01:4f8::7",
            "11.0.0.1",
        ] {
            assert!(!p.allows(ip(a), 443), "{a} in {p}");
            assert!(
                !p.judge(Destination::Name(a.to_owned(), 443), true).1,
                "{a}"
            );
        }
        assert!(p.allows(ip("203.0.114.8"), 443), "a neighbour is not us");
    }
    // An explicit block allows what it names, as documented.
    assert!(explicit.allows(ip("203.0.114.7"), 443) && explicit.allows(ip("11.0.0.1"), 80));
    // A fresh read replaces the old list.
    default.set_own_addrs([ip("8.8.8.8")]);
    assert!(default.allows(ip("203.0.114.7"), 443) && !default.allows(ip("8.8.8.8"), 443));
    // Allowed: nothing more is refused than without the host's addresses.
    let mut open = ExitPolicy::default().allowing_own_addrs();
    open.set_own_addrs(own);
    assert!(!open.refuses_own_addrs());
    assert!(open.allows(ip("203.0.114.7"), 443) && !open.allows(ip("127.0.0.1"), 443));
}
