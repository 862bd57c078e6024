//! `upstream` and `isolate`, top-level and in `[server]`: a SOCKS5 proxy to reach the
//! relay (client) or the destinations (relay) through.

use toml::Value;

use super::ConfigError;
use super::value::{Origin, check_host_port};

/// A SOCKS5 proxy the client reaches its relay through (`upstream = "socks5://…"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port` of the proxy.
    pub proxy: String,
    /// RFC 1929 username and password, if the URL has them.
    pub credentials: Option<(String, String)>,
    /// Use fresh random credentials for every session (`isolate = true`): Tor's
    /// IsolateSOCKSAuth then gives each session a circuit of its own.
    pub isolate: bool,
}

impl Upstream {
    /// Parse `socks5://[user:pass@]host:port`.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let rest = url
            .strip_prefix("socks5://")
            .or_else(|| url.strip_prefix("socks5h://"))
            .ok_or_else(|| format!("expected socks5://[user:pass@]host:port (got {url:?})"))?;
        let (creds, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => {
                let (u, p) = c
                    .split_once(':')
                    .ok_or_else(|| format!("credentials must be user:password (got {url:?})"))?;
                if u.is_empty() || u.len() > 255 || p.len() > 255 {
                    return Err(format!(
                        "user and password must be 1 to 255 bytes (got {url:?})"
                    ));
                }
                (Some((u.to_owned(), p.to_owned())), h)
            }
            None => (None, rest),
        };
        check_host_port(hostport.trim_end_matches('/'))?;
        Ok(Upstream {
            proxy: hostport.trim_end_matches('/').to_owned(),
            credentials: creds,
            isolate: false,
        })
    }

    /// Reads `{table}upstream` and `{table}isolate`, which only makes sense with an upstream.
    pub(super) fn from_raw(
        o: &Origin<'_>,
        table: &str,
        upstream: Option<Value>,
        isolate: Option<Value>,
    ) -> Result<Option<Upstream>, ConfigError> {
        let (uf, isf) = (format!("{table}upstream"), format!("{table}isolate"));
        let mut up = match upstream {
            Some(v) => {
                let s = o.string(&uf, v)?;
                Some(Upstream::parse(&s).map_err(|m| o.err(&uf, m))?)
            }
            None => None,
        };
        if let Some(v) = isolate {
            let b = o.boolean(&isf, v)?;
            match up.as_mut() {
                Some(u) => u.isolate = b,
                None if b => return Err(o.err(&isf, format!("needs {uf}"))),
                None => {}
            }
        }
        Ok(up)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::parse;

    #[test]
    fn upstream_and_isolate() {
        let c = parse("upstream = \"socks5://u:p@127.0.0.1:9050\"\nisolate = true\n").unwrap();
        let u = c.upstream.unwrap();
        assert_eq!(u.proxy, "127.0.0.1:9050");
        assert_eq!(u.credentials, Some(("u".into(), "p".into())));
        assert!(u.isolate);
        let c = parse("upstream = \"socks5h://[::1]:1080\"").unwrap();
        assert_eq!(c.upstream.unwrap().credentials, None);
        for (text, needle) in [
            ("upstream = \"http://x:1\"", "upstream: expected socks5://"),
            ("upstream = \"socks5://nopass@h:1\"", "user:password"),
            ("upstream = \"socks5://h\"", "upstream:"),
            ("isolate = true", "isolate: needs upstream"),
            (
                "[server]\nisolate = true",
                "server.isolate: needs server.upstream",
            ),
            (
                "[server]\nupstream = \"socks4://h:1\"",
                "server.upstream: expected socks5://",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
