//! The events qnet follows (control-spec 4.1.1 CIRC, 4.1.2 STREAM, 4.1.10 STATUS_CLIENT),
//! parsed into plain structs. Keywords qnet does not know are passed over, as the spec
//! asks of controllers; an event it cannot read is `None`, never a failure.

use super::reply::{Word, value, words};

/// A circuit's state change (`650 CIRC` or a line of `GETINFO circuit-status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Circ {
    /// Tor's circuit id.
    pub(crate) id: u64,
    /// LAUNCHED, BUILT, EXTENDED, FAILED, CLOSED, GUARD_WAIT, or a newer word.
    pub(crate) status: String,
    /// The relays, entry first, as `$FINGERPRINT~nickname` (or whatever Tor wrote).
    pub(crate) path: Vec<String>,
    /// `PURPOSE=` (GENERAL for circuits that carry streams).
    pub(crate) purpose: Option<String>,
}

impl Circ {
    /// Reads `ID STATUS [PATH] [KEY=VALUE...]`.
    pub(crate) fn parse(text: &str) -> Option<Circ> {
        let w = words(text);
        let (Some(Word::Arg(id)), Some(Word::Arg(status))) = (w.first(), w.get(1)) else {
            return None;
        };
        let path = match w.get(2) {
            Some(Word::Arg(p)) => p.split(',').map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Some(Circ {
            id: id.parse().ok()?,
            status: status.clone(),
            path,
            purpose: value(&w, "PURPOSE").map(str::to_owned),
        })
    }

    /// The circuit is gone.
    pub(crate) fn ended(&self) -> bool {
        matches!(self.status.as_str(), "FAILED" | "CLOSED")
    }
}

/// A stream's state change (`650 STREAM`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stream {
    /// Tor's stream id.
    pub(crate) id: u64,
    /// NEW, SENTCONNECT, SUCCEEDED, FAILED, CLOSED, DETACHED, or a newer word.
    pub(crate) status: String,
    /// The circuit carrying it (0 while unattached).
    pub(crate) circuit: u64,
    /// `host:port` it goes to.
    pub(crate) target: String,
    /// `SOURCE_ADDR=`: the SOCKS client's address, which tells qnet's sessions apart.
    pub(crate) source: Option<std::net::SocketAddr>,
    /// `SOCKS_USERNAME=`.
    pub(crate) username: Option<String>,
}

impl Stream {
    /// Reads `ID STATUS CIRCUIT TARGET [KEY=VALUE...]`.
    pub(crate) fn parse(text: &str) -> Option<Stream> {
        let w = words(text);
        let arg = |i: usize| match w.get(i) {
            Some(Word::Arg(a)) => Some(a.as_str()),
            _ => None,
        };
        Some(Stream {
            id: arg(0)?.parse().ok()?,
            status: arg(1)?.to_owned(),
            circuit: arg(2)?.parse().ok()?,
            target: arg(3)?.to_owned(),
            source: value(&w, "SOURCE_ADDR").and_then(|s| s.parse().ok()),
            username: value(&w, "SOCKS_USERNAME").map(str::to_owned),
        })
    }

    /// The stream is gone.
    pub(crate) fn ended(&self) -> bool {
        matches!(self.status.as_str(), "FAILED" | "CLOSED")
    }
}

/// Bootstrap progress (`650 STATUS_CLIENT NOTICE BOOTSTRAP …` or `status/bootstrap-phase`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bootstrap {
    /// `PROGRESS=`, 0 to 100.
    pub(crate) percent: u8,
    /// `SUMMARY=`, e.g. "Loading relay descriptors".
    pub(crate) summary: String,
}

impl Bootstrap {
    /// Reads `SEVERITY BOOTSTRAP PROGRESS=N … SUMMARY="…"`; `None` for other statuses.
    pub(crate) fn parse(text: &str) -> Option<Bootstrap> {
        let w = words(text);
        if !matches!(w.get(1), Some(Word::Arg(a)) if a == "BOOTSTRAP") {
            return None;
        }
        let percent: u8 = value(&w, "PROGRESS")?.parse().ok()?;
        Some(Bootstrap {
            percent: percent.min(100),
            summary: value(&w, "SUMMARY").unwrap_or("").to_owned(),
        })
    }
}

/// An event qnet follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// `CIRC`.
    Circ(Circ),
    /// `STREAM`.
    Stream(Stream),
    /// `STATUS_CLIENT … BOOTSTRAP`.
    Bootstrap(Bootstrap),
}

/// The event in a 650 line's text, `None` for others and for what cannot be read.
pub(crate) fn parse(text: &str) -> Option<Event> {
    let (kind, rest) = text.split_once(' ')?;
    match kind {
        "CIRC" => Circ::parse(rest).map(Event::Circ),
        "STREAM" => Stream::parse(rest).map(Event::Stream),
        "STATUS_CLIENT" => Bootstrap::parse(rest).map(Event::Bootstrap),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circ_events_with_and_without_a_path() {
        let e = parse(
            "CIRC 7 BUILT $AAAA~auth0,$BBBB~relay4 BUILD_FLAGS=NEED_CAPACITY PURPOSE=GENERAL TIME_CREATED=2026-12-03T12:00:00.0 NEWKEY=x",
        );
        let Some(Event::Circ(c)) = e else {
            panic!("{e:?}")
        };
        assert_eq!((c.id, c.status.as_str()), (7, "BUILT"));
        assert_eq!(c.path, vec!["$AAAA~auth0", "$BBBB~relay4"]);
        assert_eq!(c.purpose.as_deref(), Some("GENERAL"));
        assert!(!c.ended());
        let c = Circ::parse("8 LAUNCHED BUILD_FLAGS=NEED_CAPACITY PURPOSE=GENERAL").unwrap();
        assert!(c.path.is_empty());
        assert!(Circ::parse("8 CLOSED REASON=FINISHED").unwrap().ended());
        assert_eq!(Circ::parse("x BUILT"), None);
    }

    #[test]
    fn stream_events_carry_the_source_address() {
        let e = parse(
            r#"STREAM 12 SUCCEEDED 7 10.99.0.1:7700 SOURCE_ADDR=127.0.0.1:41234 PURPOSE=USER SOCKS_USERNAME="ab" SOCKS_PASSWORD="cd" CLIENT_PROTOCOL=SOCKS5 NEW_THING=1"#,
        );
        let Some(Event::Stream(s)) = e else {
            panic!("{e:?}")
        };
        assert_eq!(
            (s.id, s.circuit, s.target.as_str()),
            (12, 7, "10.99.0.1:7700")
        );
        assert_eq!(s.source, Some("127.0.0.1:41234".parse().unwrap()));
        assert_eq!(s.username.as_deref(), Some("ab"));
        let s = Stream::parse("13 NEW 0 relay.tor.test:7700").unwrap();
        assert_eq!((s.circuit, s.source), (0, None));
        assert!(
            Stream::parse("13 CLOSED 7 h:1 REASON=DONE")
                .unwrap()
                .ended()
        );
        assert_eq!(Stream::parse("13 NEW"), None);
    }

    #[test]
    fn bootstrap_status() {
        let e = parse(
            r#"STATUS_CLIENT NOTICE BOOTSTRAP PROGRESS=45 TAG=requesting_descriptors SUMMARY="Asking for relay descriptors" COUNT=1"#,
        );
        assert_eq!(
            e,
            Some(Event::Bootstrap(Bootstrap {
                percent: 45,
                summary: "Asking for relay descriptors".into()
            }))
        );
        assert_eq!(parse("STATUS_CLIENT NOTICE CIRCUIT_ESTABLISHED"), None);
        assert_eq!(parse("STATUS_CLIENT NOTICE BOOTSTRAP TAG=x"), None);
        assert_eq!(parse("BW 1 2"), None);
        assert_eq!(parse("CIRC"), None);
    }
}
