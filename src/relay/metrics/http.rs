//! `/metrics` over HTTP/1.1 on a listener of its own, on one thread: a scrape is a
//! few kilobytes a few times a minute, so requests are served one at a time, each
//! bounded in size and time (a slow peer holds the listener at most [`IO_TIMEOUT`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::Metrics;
use super::export::{Format, render};
use crate::qlog;

/// How long one request may take to arrive (all of it, not each read), and its answer
/// to leave.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of a request that is read (a scraper's request line and headers).
const MAX_REQUEST: usize = 8192;

/// Bind `addr` and serve `/metrics` from `m` on a thread of its own; the bound address.
pub fn serve(addr: SocketAddr, m: Arc<Metrics>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("qnet-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = answer(s, &m) {
                            qlog!(Debug, "metrics request: {e}");
                        }
                    }
                    Err(e) => {
                        qlog!(Warn, "metrics listener: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(bound)
}

/// Read one request and answer it, then close.
fn answer(mut s: TcpStream, m: &Arc<Metrics>) -> io::Result<()> {
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        // A peer trickling a byte at a time must not hold the one listener for long.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            );
        }
    }
    let head = String::from_utf8_lossy(&buf);
    match route(&head) {
        Route::Metrics { format, head_only } => {
            let body = render(m, format);
            let body: &[u8] = if head_only { b"" } else { body.as_bytes() };
            respond(&mut s, "200 OK", format.content_type(), body)
        }
        Route::NotFound => respond(&mut s, "404 Not Found", "text/plain", b"try /metrics\n"),
        Route::BadMethod => respond(&mut s, "405 Method Not Allowed", "text/plain", b""),
        Route::Bad => respond(&mut s, "400 Bad Request", "text/plain", b""),
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { format: Format, head_only: bool },
    NotFound,
    BadMethod,
    Bad,
}

/// Judge a request's head: `GET /metrics` (or `HEAD`), OpenMetrics when its Accept
/// header names it.
fn route(head: &str) -> Route {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::BadMethod,
    };
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Route::NotFound;
    }
    let open = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    let format = if open {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    };
    Route::Metrics { format, head_only }
}

fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_by_method_path_and_accept() {
        let get = |h: &str| route(&format!("{h}\r\nHost: x\r\n\r\n"));
        assert_eq!(
            get("GET /metrics HTTP/1.1"),
            Route::Metrics {
                format: Format::Prometheus,
                head_only: false
            }
        );
        assert_eq!(
            route(
                "GET /metrics?x=1 HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0,text/plain;q=0.5\r\n\r\n"
            ),
            Route::Metrics {
                format: Format::OpenMetrics,
                head_only: false
            }
        );
        assert_eq!(
            get("HEAD /metrics HTTP/1.1"),
            Route::Metrics {
                format: Format::Prometheus,
                head_only: true
            }
        );
        assert_eq!(get("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(get("POST /metrics HTTP/1.1"), Route::BadMethod);
        assert_eq!(get("GET /metrics SPDY/3"), Route::Bad);
        assert_eq!(get("garbage"), Route::Bad);
    }

    #[test]
    fn a_trickling_peer_holds_the_listener_no_longer_than_the_deadline() {
        let m = Metrics::new(1);
        let addr = serve("127.0.0.1:0".parse().unwrap(), m).unwrap();
        let mut slow = TcpStream::connect(addr).unwrap();
        let t0 = std::time::Instant::now();
        // A byte every 0.5 s, each within the old per-read timeout.
        for b in b"GET /m" {
            if slow.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let mut fast = TcpStream::connect(addr).unwrap();
        fast.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        fast.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(t0.elapsed() < IO_TIMEOUT * 3, "{:?}", t0.elapsed());
    }

    #[test]
    fn a_scrape_answers_with_the_metrics_and_closes() {
        let m = Metrics::new(2);
        m.of_loop(1).handshake(super::super::Handshake::Ok);
        let addr = serve("127.0.0.1:0".parse().unwrap(), m).unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("qnet_relay_sessions_total 1\n"), "{out}");
        assert!(
            out.contains("qnet_relay_handshakes_total{result=\"ok\"} 1\n"),
            "{out}"
        );
    }
}
