//! Tests of the resolver hooks' safe steps and their marshalling.

use super::*;
use crate::engine::preload::Decision;

fn hints(flags: c_int, family: c_int) -> addrinfo {
    // SAFETY: addrinfo is plain old data; all-zero is valid.
    let mut h: addrinfo = unsafe { std::mem::zeroed() };
    h.ai_flags = flags;
    h.ai_family = family;
    h
}

#[test]
fn refused_functions_find_their_real_definition_on_new_glibc() {
    // glibc >= 2.34 has `__res_*` only as compatibility symbols dlsym cannot see; the
    // pass-through must still find a function for every hooked name (else ENOSYS).
    use super::refused::*;
    let found = [
        ("res_query", res_query::real().is_some()),
        ("res_search", res_search::real().is_some()),
        ("res_querydomain", res_querydomain::real().is_some()),
        ("res_send", res_send::real().is_some()),
        ("res_nquery", res_nquery::real().is_some()),
        ("res_nsearch", res_nsearch::real().is_some()),
        ("res_nquerydomain", res_nquerydomain::real().is_some()),
        ("res_nsend", res_nsend::real().is_some()),
        ("__res_query", __res_query::real().is_some()),
        ("__res_search", __res_search::real().is_some()),
        ("__res_querydomain", __res_querydomain::real().is_some()),
        ("__res_send", __res_send::real().is_some()),
        ("__res_nquery", __res_nquery::real().is_some()),
        ("__res_nsearch", __res_nsearch::real().is_some()),
        ("__res_nquerydomain", __res_nquerydomain::real().is_some()),
        ("__res_nsend", __res_nsend::real().is_some()),
        ("rcmd", rcmd::real().is_some()),
        ("rcmd_af", rcmd_af::real().is_some()),
        ("rexec", rexec::real().is_some()),
        ("rexec_af", rexec_af::real().is_some()),
        ("ruserok", ruserok::real().is_some()),
        ("ruserok_af", ruserok_af::real().is_some()),
        ("iruserok", iruserok::real().is_some()),
        ("iruserok_af", iruserok_af::real().is_some()),
        ("getnetbyname", getnetbyname::real().is_some()),
        ("getnetbyname_r", getnetbyname_r::real().is_some()),
        ("getnetbyaddr", getnetbyaddr::real().is_some()),
        ("getnetbyaddr_r", getnetbyaddr_r::real().is_some()),
    ];
    let missing: Vec<_> = found.iter().filter(|f| !f.1).map(|f| f.0).collect();
    assert!(missing.is_empty(), "no real function for {missing:?}");
}

#[test]
fn res_query_passes_through_with_interception_off() {
    // A program that links libqnet without opting in: the real res_* runs.
    use super::refused::decision;
    assert_eq!(decision(false), Decision::Bypass);
    assert_eq!(decision(true), Decision::Refuse(libc::ECONNREFUSED));
    // The test process never turns interception on: the hook is the real function.
    assert!(!intercepting());
}

#[test]
fn getnetbyname_r_passes_through_with_interception_off() {
    // Interception off: the real function answers (a name /etc/networks never has is
    // not found, with the out-parameters set the real way, not by the refusal).
    use super::refused::getnetbyname_r;
    let mut ent: libc::netent = unsafe_zeroed();
    let mut buf = [0 as c_char; 1024];
    let mut result: *mut libc::netent = &mut ent;
    let mut herr = 0;
    // SAFETY: valid buffers of the given sizes.
    let r = unsafe {
        getnetbyname_r(
            c"qnet-no-such-network".as_ptr(),
            &mut ent,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
            &mut herr,
        )
    };
    assert!(result.is_null(), "r={r}");
    assert_ne!(
        herr, NO_RECOVERY,
        "the refusal's h_errno with interception off"
    );
}

fn unsafe_zeroed<T>() -> T {
    // SAFETY: used only for C structs of plain data, where all-zero is valid.
    unsafe { std::mem::zeroed() }
}

#[test]
fn gai_plan_numeric_hosts_and_names() {
    let GaiPlan::Real(h) = gai_plan(Lookup::Real, true, hints(0, libc::AF_UNSPEC)) else {
        panic!("real")
    };
    assert_ne!(h.ai_flags & libc::AI_NUMERICHOST, 0, "no lookup may leave");
    let GaiPlan::Real(h) = gai_plan(Lookup::Real, false, hints(0, libc::AF_UNSPEC)) else {
        panic!("real")
    };
    assert_eq!(
        h.ai_flags & libc::AI_NUMERICHOST,
        0,
        "remote DNS off: the real lookup"
    );
    assert!(matches!(
        gai_plan(Lookup::NotFound, true, hints(0, 0)),
        GaiPlan::Fail(libc::EAI_NONAME)
    ));
    let found = || Lookup::Addrs(vec!["240.0.0.1".parse().unwrap()], "example.org".into());
    assert!(matches!(
        gai_plan(found(), true, hints(libc::AI_NUMERICHOST, 0)),
        GaiPlan::Fail(libc::EAI_NONAME)
    ));
    let flags = libc::AI_CANONNAME | libc::AI_ADDRCONFIG;
    let GaiPlan::Answer {
        addrs,
        canon,
        hints,
    } = gai_plan(found(), true, hints(flags, 0))
    else {
        panic!("answer")
    };
    assert_eq!(addrs.len(), 1);
    assert_eq!(canon.as_deref(), Some("example.org"));
    assert_eq!(hints.ai_flags, libc::AI_NUMERICHOST);
    let GaiPlan::Answer { canon, .. } = gai_plan(found(), true, self::hints(0, 0)) else {
        panic!("answer")
    };
    assert_eq!(canon, None, "no canonical name unless asked");
}

#[test]
fn numeric_answers_chain_every_family() {
    let addrs: Vec<IpAddr> = vec!["240.0.0.7".parse().unwrap(), "100::7".parse().unwrap()];
    let mut h = hints(libc::AI_NUMERICHOST, 0);
    h.ai_socktype = libc::SOCK_STREAM;
    // SAFETY: libc's getaddrinfo with numeric hosts (no lookup) and a service string.
    let head = unsafe { numeric_answers(libc::getaddrinfo, &addrs, c"443".as_ptr(), h) }
        .expect("numeric hosts resolve");
    // SAFETY: the list just built, freed right after.
    let seen = unsafe { crate::sockaddr::addrinfo_addrs(head) };
    // SAFETY: as above.
    unsafe { libc::freeaddrinfo(head) };
    let want: Vec<SocketAddr> = vec![
        "240.0.0.7:443".parse().unwrap(),
        "[100::7]:443".parse().unwrap(),
    ];
    assert_eq!(seen, want);
    // SAFETY: as above; a service no numeric lookup knows gives the real error.
    let e = unsafe { numeric_answers(libc::getaddrinfo, &addrs, c"no-such-service-x".as_ptr(), h) };
    assert!(e.is_err());
}

#[test]
fn copy_host_needs_room_for_the_nul() {
    let mut out = [0xFFu8; 12];
    assert_eq!(copy_host("example.org", &mut out), Ok(()));
    assert_eq!(&out, b"example.org\0");
    assert_eq!(
        copy_host("example.org", &mut out[..11]),
        Err(libc::EAI_OVERFLOW)
    );
}

#[test]
fn host_out_reports_failure_and_success() {
    let mut ent: hostent = HOST.with(|h| {
        // SAFETY: reading this thread's storage (a plain struct).
        unsafe { (*h.get()).ent }
    });
    let mut buf = [0u64; 32];
    let mut result: *mut hostent = ptr::null_mut();
    let mut herr = 0;
    let out = HostOut {
        ret: &mut ent,
        buf: buf.as_mut_ptr().cast(),
        buflen: 256,
        result: &mut result,
        h_errnop: &mut herr,
    };
    // SAFETY: pointers to the locals above.
    unsafe {
        assert_eq!(out.deliver(HostAnswer::Real, libc::AF_INET), Err(()));
        assert_eq!(out.deliver(HostAnswer::NotFound, libc::AF_INET), Ok(0));
        assert!(result.is_null());
        assert_eq!(herr, HOST_NOT_FOUND);
        assert_eq!(out.deliver(HostAnswer::Fail, libc::AF_INET), Ok(libc::EIO));
        assert_eq!(herr, NO_RECOVERY);
        let found = HostAnswer::Found("h.test".into(), vec!["192.0.2.3".parse().unwrap()]);
        assert_eq!(out.deliver(found, libc::AF_INET), Ok(0));
        assert_eq!(result, &raw mut ent);
    }
    assert_eq!(host_family(libc::AF_UNSPEC), libc::AF_INET);
    assert_eq!(host_family(libc::AF_INET6), libc::AF_INET6);
}
