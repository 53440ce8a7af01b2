//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4): counters and latency
//! histograms recorded as the node works, and gauges read when scraped (envs, reserved
//! memory, library bytes). Hand-written: the format is a few lines of text, and the
//! `prometheus` crate would add protobuf and a global registry for nothing.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// A metric's name and its label set, rendered (`{k="v",...}` or empty).
type Key = (&'static str, String);

/// A latency histogram: counts per bucket (not cumulative), sum and count.
#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// The node's counters and histograms.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Key, u64>>,
    histograms: Mutex<BTreeMap<Key, Histogram>>,
}

/// Help text of each metric this module writes.
const HELP: [(&str, &str, &str); 9] = [
    ("spawngrid_spawns_total", "counter", "env spawns by result"),
    ("spawngrid_saves_total", "counter", "env saves by result"),
    ("spawngrid_booms_total", "counter", "envs boomed by request"),
    (
        "spawngrid_evictions_total",
        "counter",
        "envs evicted to make room",
    ),
    (
        "spawngrid_http_requests_total",
        "counter",
        "API requests by route and status",
    ),
    (
        "spawngrid_spawn_seconds",
        "histogram",
        "time to spawn an env",
    ),
    ("spawngrid_save_seconds", "histogram", "time to save an env"),
    (
        "spawngrid_http_request_seconds",
        "histogram",
        "API request latency by route",
    ),
    (
        "spawngrid_ssh_sessions_total",
        "counter",
        "SSH sessions opened",
    ),
];

/// Renders labels `[("k", "v")]` as `{k="v"}`, escaping values.
fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Metrics {
    /// Adds one to counter `name` with `pairs` as labels.
    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)]) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry((name, labels(pairs))).or_default() += 1;
    }

    /// Records `took` in histogram `name` with `pairs` as labels.
    pub fn observe(&self, name: &'static str, pairs: &[(&str, &str)], took: Duration) {
        let secs = took.as_secs_f64();
        let mut h = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        let h = h.entry((name, labels(pairs))).or_default();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            h.buckets[i] += 1;
        }
        h.sum += secs;
        h.count += 1;
    }

    /// The exposition text: recorded metrics, then `gauges` (name, help, value).
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let histograms = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((_, l), v) in counters
                .range((name, String::new())..)
                .take_while(|(k, _)| k.0 == name)
            {
                let _ = writeln!(out, "{name}{l} {v}");
            }
            for ((_, l), h) in histograms
                .range((name, String::new())..)
                .take_while(|(k, _)| k.0 == name)
            {
                let inner = l.trim_start_matches('{').trim_end_matches('}');
                let sep = if inner.is_empty() { "" } else { "," };
                let mut cumulative = 0;
                for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                    cumulative += n;
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{inner}{sep}le=\"{bound}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum{l} {}", h.sum);
                let _ = writeln!(out, "{name}_count{l} {}", h.count);
            }
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

/// Appends gauge `name` to `out` with one sample per node (`{node="NAME"}`).
pub fn node_gauge(out: &mut String, name: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (node, value) in samples {
        let _ = writeln!(out, "{name}{} {value}", labels(&[("node", node)]));
    }
}

/// A remote library's traffic (requests and bytes, summed over every process of the node's
/// data directory: the node, its `lib` commands and snapfs mount servers) as counters.
pub fn remote_library(c: &library::backend::cache::RemoteCounts) -> String {
    let all = [
        ("read_requests", "ranged and whole reads", c.read_requests),
        ("read_bytes", "bytes read", c.read_bytes),
        ("write_requests", "writes", c.write_requests),
        ("write_bytes", "bytes written", c.write_bytes),
    ];
    let mut out = String::new();
    for (what, help, v) in all {
        let name = format!("spawngrid_library_remote_{what}_total");
        let _ = writeln!(
            out,
            "# HELP {name} {help} from the remote library (S3) by this node's processes\n\
             # TYPE {name} counter\n{name} {v}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.inc("spawngrid_spawns_total", &[("result", "ok")]);
        m.inc("spawngrid_spawns_total", &[("result", "ok")]);
        m.inc("spawngrid_spawns_total", &[("result", "error")]);
        m.observe("spawngrid_spawn_seconds", &[], Duration::from_millis(15));
        m.observe(
            "spawngrid_http_request_seconds",
            &[("route", "/api/envs"), ("method", "GET")],
            Duration::from_secs(100),
        );
        let text = m.render(&[("spawngrid_envs", "envs on this node", 3.0)]);
        assert!(
            text.contains("spawngrid_spawns_total{result=\"ok\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("spawngrid_spawns_total{result=\"error\"} 1\n"));
        assert!(text.contains("spawngrid_spawn_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("spawngrid_spawn_seconds_bucket{le=\"0.02\"} 1\n"));
        assert!(text.contains("spawngrid_spawn_seconds_count 1\n"));
        // Beyond the last bucket: only +Inf counts it.
        assert!(text.contains(
            "spawngrid_http_request_seconds_bucket{route=\"/api/envs\",method=\"GET\",le=\"30\"} 0\n"
        ));
        assert!(text.contains(
            "spawngrid_http_request_seconds_bucket{route=\"/api/envs\",method=\"GET\",le=\"+Inf\"} 1\n"
        ));
        assert!(text.contains("# TYPE spawngrid_envs gauge\nspawngrid_envs 3\n"));
        assert_eq!(labels(&[("a", "x\"y")]), "{a=\"x\\\"y\"}");
    }

    #[test]
    fn node_gauges_have_one_sample_per_node() {
        let mut out = String::new();
        node_gauge(&mut out, "g", "help", &[("n1", 1.0), ("n2", 0.0)]);
        assert_eq!(
            out,
            "# HELP g help\n# TYPE g gauge\ng{node=\"n1\"} 1\ng{node=\"n2\"} 0\n"
        );
    }

    #[test]
    fn remote_library_traffic_is_four_counters() {
        let c = library::backend::cache::RemoteCounts {
            read_requests: 3,
            read_bytes: 4096,
            write_requests: 1,
            write_bytes: 7,
        };
        let text = remote_library(&c);
        assert!(text.contains(
            "# TYPE spawngrid_library_remote_read_bytes_total counter\n\
             spawngrid_library_remote_read_bytes_total 4096\n"
        ));
        assert!(text.contains("spawngrid_library_remote_read_requests_total 3\n"));
        assert!(text.contains("spawngrid_library_remote_write_bytes_total 7\n"));
        assert_eq!(text.lines().count(), 12);
    }
}
