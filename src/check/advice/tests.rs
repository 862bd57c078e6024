use super::*;

fn key(b: u8) -> PublicKey {
    PublicKey([b; 32])
}

fn silence(files: LocalFiles) -> Line {
    silent(&Silence {
        relay: "10.0.0.1:7000",
        key: key(1),
        own: key(2),
        same_key_as: Vec::new(),
        files,
    })
}

fn text(l: &Line) -> String {
    l.to_string()
}

#[test]
fn a_silent_relay_without_its_files_names_both_causes_with_the_values() {
    let l = silence(LocalFiles::default());
    assert_eq!(l.status, Status::Fail);
    let t = text(&l);
    assert!(
        t.starts_with("FAIL  relay 10.0.0.1:7000 answered nothing"),
        "{t}"
    );
    assert!(t.contains(&format!("the config has {}", key(1))), "{t}");
    assert!(
        t.contains(&format!("this client's key is {}", key(2))),
        "{t}"
    );
    assert!(t.contains("qnet pubkey < relay.key"), "{t}");
    assert!(
        t.contains("--relay-key-file") && t.contains("--clients-file"),
        "{t}"
    );
    assert!(!t.contains("same key"), "{t}");
    // The continuation lines are indented under the status column.
    assert!(t.lines().skip(1).all(|m| m.starts_with("      ")), "{t}");
}

#[test]
fn a_key_shared_with_another_relay_is_noted() {
    let t = text(&silent(&Silence {
        relay: "a:1",
        key: key(1),
        own: key(2),
        same_key_as: vec!["b:2".into()],
        files: LocalFiles::default(),
    }));
    assert!(t.contains("note: b:2 has the same key configured"), "{t}");
}

#[test]
fn the_relays_files_tell_the_two_causes_apart() {
    let rk = |k: PublicKey| Some(("relay.key".to_owned(), Ok(k)));
    let listed = |b: bool| Some(("clients".to_owned(), Ok(b)));
    let cases: [(LocalFiles, &str); 7] = [
        (
            LocalFiles {
                relay_key: rk(key(3)),
                listed: None,
            },
            "wrong relay key for 10.0.0.1:7000",
        ),
        (
            LocalFiles {
                relay_key: rk(key(3)),
                listed: listed(false),
            },
            "wrong relay key",
        ),
        (
            LocalFiles {
                relay_key: rk(key(1)),
                listed: None,
            },
            "matches relay.key, so this client's key is not on",
        ),
        (
            LocalFiles {
                relay_key: rk(key(1)),
                listed: listed(false),
            },
            "this client is not on 10.0.0.1:7000's allow-list",
        ),
        (
            LocalFiles {
                relay_key: None,
                listed: listed(true),
            },
            "is likely wrong",
        ),
        (
            LocalFiles {
                relay_key: rk(key(1)),
                listed: listed(true),
            },
            "both match",
        ),
        (
            LocalFiles {
                relay_key: Some(("relay.key".into(), Err("mode 0644".into()))),
                listed: None,
            },
            "cannot read relay.key: mode 0644",
        ),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (files, want) in cases {
        let l = silence(files.clone());
        let t = text(&l);
        assert_eq!(l.status, Status::Fail, "{files:?}");
        assert!(t.contains(want), "{files:?}: {t}");
        assert!(l.more.is_empty(), "one line once it is decided: {t}");
        seen.insert(t);
    }
    // A wrong key is the answer whatever the clients file says: the first two agree.
    assert_eq!(seen.len(), 6, "each cause its own message");
    // Not on the list: the exact line to add.
    let t = text(&silence(LocalFiles {
        relay_key: None,
        listed: listed(false),
    }));
    assert!(
        t.contains(&format!("add the line `{}` to clients", key(2))),
        "{t}"
    );
}

#[test]
fn open_results_read_as_the_policy_and_the_resolver_see_them() {
    use OpenOutcome::*;
    let p = |o| policy("r:1", "127.0.0.1:9", o);
    assert_eq!(p(Opened).status, Status::Ok);
    assert_eq!(p(Failed(OpenError::Refused)).status, Status::Ok);
    assert!(
        p(Failed(OpenError::Refused))
            .text
            .contains("connection refused")
    );
    let forbidden = p(Failed(OpenError::Forbidden));
    assert_eq!(forbidden.status, Status::Fail);
    assert!(
        forbidden.text.contains("refuses 127.0.0.1:9") && forbidden.text.contains("--exit-allow")
    );
    assert_eq!(p(Failed(OpenError::Failure)).status, Status::Fail);
    assert_eq!(p(NoAnswer).status, Status::Fail);
    let n = |o| name("r:1", "x.invalid", o);
    let nx = n(Failed(OpenError::NameNotFound));
    assert_eq!(nx.status, Status::Fail);
    assert!(nx.text.contains("cannot resolve x.invalid"), "{}", nx.text);
    // Refused by the policy or by the host: either way the name resolved first.
    for o in [
        Opened,
        Failed(OpenError::Forbidden),
        Failed(OpenError::Refused),
    ] {
        assert_eq!(n(o).status, Status::Ok, "{o:?}");
    }
    assert_eq!(n(NoAnswer).status, Status::Fail);
}

#[test]
fn stopped_paths_say_where() {
    let hops = vec!["a:1".to_owned(), "b:2".to_owned()];
    let refused = ProbeFault::Connect("a:1: Connection refused".into());
    let t = stopped(&hops, &refused, None);
    assert!(
        t.starts_with("relay unreachable: a:1: Connection refused"),
        "{t}"
    );
    assert!(t.contains("qnet-relay --listen"), "{t}");
    let t = stopped(&hops, &refused, Some("127.0.0.1:9050"));
    assert!(
        t.starts_with("upstream proxy 127.0.0.1:9050 unreachable"),
        "{t}"
    );
    let t = stopped(
        &hops,
        &ProbeFault::Failed {
            hop: 1,
            why: "x".into(),
        },
        None,
    );
    assert_eq!(t, "handshake with relay b:2 failed: x");
    let refused = "a:1 refused to extend to b:2: forbidden by exit policy";
    let t = stopped(
        &hops,
        &ProbeFault::Failed {
            hop: 0,
            why: refused.into(),
        },
        None,
    );
    assert!(
        t.starts_with("route stops at relay a:1: a:1 refused"),
        "{t}"
    );
    assert!(t.contains("--extend-to"), "{t}");
}

#[test]
fn key_file_problems_say_how_to_fix_them() {
    let p = Path::new("/h/client.key");
    let missing = KeyError::Io {
        path: p.into(),
        source: io::Error::from(io::ErrorKind::NotFound),
    };
    let t = key_failed(p, &missing);
    assert!(
        t.contains("does not exist") && t.contains("(umask 077; qnet keygen > /h/client.key)"),
        "{t}"
    );
    let exposed = KeyError::Permissions(crate::fileperm::PermError::Exposed {
        what: "key file",
        path: p.into(),
        mode: 0o644,
    });
    let t = key_failed(p, &exposed);
    assert!(
        t.contains("(mode 0644); run: chmod 600 /h/client.key"),
        "{t}"
    );
    let bad = KeyError::BadKeyFile {
        path: p.into(),
        source: Box::new(KeyError::Empty),
    };
    assert!(key_failed(p, &bad).contains("as `qnet keygen` prints"));
    assert!(own_key("r:1", &key(2)).contains(&key(2).to_string()));
    assert!(no_key().contains("QNET_KEY"));
}

#[test]
fn config_errors_about_relay_keys_say_where_the_key_comes_from() {
    let e = ConfigError::Field {
        origin: "q.toml".into(),
        field: "relay_key".into(),
        message: "invalid key".into(),
    };
    let t = config_failed(&e);
    assert!(
        t.starts_with("config q.toml: relay_key: invalid key"),
        "{t}"
    );
    assert!(t.contains("qnet pubkey < relay.key"), "{t}");
    let e = ConfigError::Syntax {
        origin: "q.toml".into(),
        line: 3,
        message: "expected `=`".into(),
    };
    assert_eq!(config_failed(&e), "config q.toml: line 3: expected `=`");
    let e = ConfigError::Field {
        origin: "q.toml".into(),
        field: "upstream".into(),
        message: "credentials must be user:password (got \"socks5://u@h:1\")".into(),
    };
    assert!(!config_failed(&e).contains("qnet pubkey"));
}

#[test]
fn no_jail_names_the_setting_in_the_way() {
    let e = io::Error::from_raw_os_error(libc::EPERM);
    let with = |clone: Option<&str>, aa: Option<&str>, max: Option<&str>| {
        no_jail(
            &e,
            &UsernsSysctls {
                unprivileged_userns_clone: clone.map(|s| format!("{s}\n")),
                apparmor_restrict: aa.map(|s| format!("{s}\n")),
                max_user_namespaces: max.map(|s| format!("{s}\n")),
            },
        )
    };
    assert!(with(Some("0"), None, Some("100")).contains("kernel.unprivileged_userns_clone=1"));
    assert!(with(Some("1"), Some("1"), None).contains("apparmor_restrict_unprivileged_userns=0"));
    assert!(with(None, Some("0"), Some("0")).contains("user.max_user_namespaces"));
    let other = with(None, None, Some("100"));
    assert!(
        other.contains("allow unprivileged user namespaces"),
        "{other}"
    );
    assert!(other.contains("--jail off"), "{other}");
    assert!(no_seccomp(&e).contains("intercept.seccomp = false"));
}

#[test]
fn lines_render_with_a_status_column() {
    assert_eq!(Line::new(Status::Ok, "x").to_string(), "ok    x");
    assert_eq!(Line::new(Status::Fail, "x").to_string(), "FAIL  x");
    assert_eq!(Line::new(Status::Skip, "x").to_string(), "skip  x");
}
