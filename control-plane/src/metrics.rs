//! Prometheus text metrics. Counters are plain atomics; gauges owned by other modules
//! (connected agents, running jobs) are read through the closures they register, so
//! this module does not reach into them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Gauge = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The process's metrics.
#[derive(Default)]
pub struct Metrics {
    http_by_class: [AtomicU64; 5],
    gauges: Mutex<Vec<(&'static str, &'static str, Gauge)>>,
}

impl Metrics {
    /// Counts one answered HTTP request by its status class.
    pub fn http_request(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.http_by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Registers a gauge read at every scrape.
    pub fn register_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        self.gauges
            .lock()
            .expect("metrics lock")
            .push((name, help, Arc::new(read)));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP dynserv_http_requests_total HTTP requests answered, by status class.\n",
        );
        out.push_str("# TYPE dynserv_http_requests_total counter\n");
        for (i, counter) in self.http_by_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "dynserv_http_requests_total{{status=\"{}xx\"}} {}",
                i + 1,
                counter.load(Ordering::Relaxed)
            );
        }
        let gauges = self.gauges.lock().expect("metrics lock").clone();
        for (name, help, read) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                read()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests are counted by class and gauges appear with their help text.
    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.http_request(200);
        m.http_request(404);
        m.http_request(201);
        m.register_gauge("dynserv_agents_connected", "Agents connected now.", || 3.0);
        let text = m.render();
        assert!(text.contains("dynserv_http_requests_total{status=\"2xx\"} 2"));
        assert!(text.contains("dynserv_http_requests_total{status=\"4xx\"} 1"));
        assert!(text.contains("dynserv_agents_connected 3"));
    }
}
