//! The metrics in Prometheus' text formats, summed over the loops at scrape time by a
//! prometheus-client `Collector` (so the loops keep plain atomics of their own).
//!
//! Counter names are given without `_total`: the encoder adds it, once. Per-loop series
//! carry a `loop` label (a small index), nothing else identifies anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{Handshake, Limit, LoopMetrics, Metrics, OPEN_RESULTS};
use crate::engine::wheel::LATENESS_BOUNDS_US;

/// The relay's collector: every family from [`Metrics`].
#[derive(Debug)]
struct Relay(Arc<Metrics>);

/// Which text format a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4 (what `curl` and `promtool` get).
    Prometheus,
    /// OpenMetrics 1.0 text (`Accept: application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// The Content-Type of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The metrics as text in `format`.
pub fn render(m: &Arc<Metrics>, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Relay(m.clone())));
    let mut out = String::new();
    let r = match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
    };
    // Writing to a String cannot fail; an encoder error would be a bug of ours (a bad
    // name), which the tests would show.
    debug_assert!(r.is_ok(), "metrics encoding failed");
    out
}

/// The sum of one field over the loops.
fn sum(m: &Metrics, f: impl Fn(&LoopMetrics) -> &AtomicU64) -> u64 {
    m.loops.iter().map(|l| f(l).load(Relaxed)).sum()
}

type Out = Result<(), std::fmt::Error>;

/// One unlabelled series.
fn one(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, t: MetricType, v: u64) -> Out {
    let enc = e.encode_descriptor(name, help, None, t)?;
    match t {
        MetricType::Counter => ConstCounter::new(v).encode(enc),
        _ => ConstGauge::new(v).encode(enc),
    }
}

/// A family with one label `key`, a series per `(value, number)`.
fn family(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    t: MetricType,
    key: &str,
    series: &[(&str, u64)],
) -> Out {
    let mut enc = e.encode_descriptor(name, help, None, t)?;
    for (value, v) in series {
        let labels = [(key, *value)];
        let s = enc.encode_family(&labels)?;
        match t {
            MetricType::Counter => ConstCounter::new(*v).encode(s)?,
            _ => ConstGauge::new(*v).encode(s)?,
        }
    }
    Ok(())
}

impl Collector for Relay {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Out {
        use MetricType::{Counter, Gauge};
        let m = &*self.0;
        let hs: Vec<_> = Handshake::ALL
            .iter()
            .enumerate()
            .map(|(i, (_, name))| (*name, sum(m, |l| &l.handshakes[i])))
            .collect();
        family(
            &mut e,
            "qnet_relay_handshakes",
            "Client handshakes by how they ended (the relay answers only ok ones).",
            Counter,
            "result",
            &hs,
        )?;
        one(
            &mut e,
            "qnet_relay_sessions",
            "Sessions established.",
            Counter,
            sum(m, |l| &l.sessions),
        )?;
        one(
            &mut e,
            "qnet_relay_sessions_open",
            "Authenticated sessions open.",
            Gauge,
            sum(m, |l| &l.sessions_open),
        )?;
        one(
            &mut e,
            "qnet_relay_connections_open",
            "Client connections open, authenticated or not.",
            Gauge,
            sum(m, |l| &l.connections),
        )?;
        one(
            &mut e,
            "qnet_relay_streams",
            "Streams clients asked for (OPENs).",
            Counter,
            sum(m, |l| &l.streams),
        )?;
        one(
            &mut e,
            "qnet_relay_streams_open",
            "Streams with a destination, or on their way to one.",
            Gauge,
            sum(m, |l| &l.streams_open),
        )?;
        let opens: Vec<_> = OPEN_RESULTS
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, sum(m, |l| &l.opens[i])))
            .collect();
        family(
            &mut e,
            "qnet_relay_opens",
            "Answers to streams' OPENs: ok or the error sent (a dial's outcome, or a refusal before it).",
            Counter,
            "result",
            &opens,
        )?;
        one(
            &mut e,
            "qnet_relay_exit_refusals",
            "Destinations the exit policy refused.",
            Counter,
            sum(m, |l| &l.exit_refusals),
        )?;
        let ext = [
            ("dialled", sum(m, |l| &l.extends)),
            ("refused", sum(m, |l| &l.extends_refused)),
        ];
        family(
            &mut e,
            "qnet_relay_extends",
            "Sessions extended to a listed relay (multi-hop routes), and refused.",
            Counter,
            "result",
            &ext,
        )?;
        let wire = [
            ("in", sum(m, |l| &l.wire_in)),
            ("out", sum(m, |l| &l.wire_out)),
        ];
        family(
            &mut e,
            "qnet_relay_wire_bytes",
            "Bytes on clients' connections (records and handshakes): in from clients, out to them.",
            Counter,
            "direction",
            &wire,
        )?;
        let payload = [
            ("up", sum(m, |l| &l.payload_up)),
            ("down", sum(m, |l| &l.payload_down)),
        ];
        family(
            &mut e,
            "qnet_relay_stream_bytes",
            "Stream payload: up from clients to destinations, down from destinations to clients.",
            Counter,
            "direction",
            &payload,
        )?;
        let lookups = [
            ("ok", sum(m, |l| &l.lookups_ok)),
            ("failed", sum(m, |l| &l.lookups_failed)),
        ];
        family(
            &mut e,
            "qnet_relay_lookups",
            "Names resolved for streams: with addresses, or none or an error.",
            Counter,
            "result",
            &lookups,
        )?;
        let enc = e.encode_descriptor(
            "qnet_relay_lookup_seconds",
            "Time the resolver threads' getaddrinfo took.",
            None,
            MetricType::Histogram,
        )?;
        m.lookup_seconds.encode(enc)?;
        one(
            &mut e,
            "qnet_relay_lookups_queued",
            "Names waiting for a resolver thread.",
            Gauge,
            m.lookups_queued.load(Relaxed),
        )?;
        one(
            &mut e,
            "qnet_relay_lookups_pending",
            "Streams waiting for their name's addresses.",
            Gauge,
            sum(m, |l| &l.lookups_pending),
        )?;
        one(
            &mut e,
            "qnet_relay_dials_pending",
            "Streams whose destination is being connected.",
            Gauge,
            sum(m, |l| &l.dials_pending),
        )?;
        one(
            &mut e,
            "qnet_relay_output_bytes",
            "Bytes sealed for clients, not yet written to their connections.",
            Gauge,
            sum(m, |l| &l.output_bytes),
        )?;
        one(
            &mut e,
            "qnet_relay_reads_paused",
            "Client connections not read while their output is over output_high_water_kib.",
            Gauge,
            sum(m, |l| &l.reads_paused),
        )?;
        let limits: Vec<_> = Limit::ALL
            .iter()
            .enumerate()
            .map(|(i, (_, name))| (*name, sum(m, |l| &l.limits[i])))
            .collect();
        family(
            &mut e,
            "qnet_relay_limit_hits",
            "Times a [server] limit refused or held something.",
            Counter,
            "limit",
            &limits,
        )?;
        shaping(&mut e, m)?;
        let cpu: Vec<_> = m
            .loops
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.cpu_ns.load(Relaxed) as f64 / 1e9))
            .collect();
        let mut enc = e.encode_descriptor(
            "qnet_relay_loop_cpu_seconds",
            "CPU time each event loop's thread used (updated once a second).",
            None,
            Counter,
        )?;
        for (i, secs) in &cpu {
            let labels = [("loop", i.as_str())];
            ConstCounter::new(*secs).encode(enc.encode_family(&labels)?)?;
        }
        one(
            &mut e,
            "qnet_relay_clients_allowed",
            "Client keys on the allow-list.",
            Gauge,
            m.clients_allowed.load(Relaxed),
        )?;
        let enc = e.encode_descriptor(
            "qnet_relay_start_time_seconds",
            "When the relay started, in seconds since the Unix epoch.",
            None,
            Gauge,
        )?;
        ConstGauge::new(m.started_unix).encode(enc)?;
        Ok(())
    }
}

/// Shaped departures: their count, how late they were served, and the shaped streams
/// the timing verifier stopped.
fn shaping(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> Out {
    let mut buckets = [0u64; 8];
    for l in &m.loops {
        for (b, a) in buckets.iter_mut().zip(&l.shaped_buckets) {
            *b += a.load(Relaxed);
        }
    }
    let count: u64 = buckets.iter().sum();
    let sum_secs = sum(m, |l| &l.shaped_sum_ns) as f64 / 1e9;
    let bounds: Vec<(f64, u64)> = LATENESS_BOUNDS_US
        .iter()
        .map(|us| *us as f64 / 1e6)
        .chain([f64::INFINITY])
        .zip(buckets)
        .collect();
    one(
        e,
        "qnet_relay_shaped_departures",
        "Shaped departures served (frames of timing-shaped streams).",
        MetricType::Counter,
        count,
    )?;
    let mut enc = e.encode_descriptor(
        "qnet_relay_shaping_lateness_seconds",
        "How late shaped departures were served after their scheduled time.",
        None,
        MetricType::Histogram,
    )?;
    enc.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        sum_secs, count, &bounds, None,
    )?;
    one(
        e,
        "qnet_relay_shaping_failures",
        "Shaped streams the timing verifier (or a failed timer) stopped.",
        MetricType::Counter,
        sum(m, |l| &l.shaping_failures),
    )
}
