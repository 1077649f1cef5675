//! Figures over time for the server page: what agents report in their heartbeats
//! (load, CPU, memory, disk), downsampled in memory and stored as points.
//!
//! Each heartbeat is added to two open buckets of its server in a [`Buffer`] (no store
//! call): a 10-second one and a 5-minute one ([`WINDOWS`]). A bucket closes when its
//! time is over; the [`flusher`] takes the closed ones every [`FLUSH_EVERY`] and
//! writes them in transactions of [`FLUSH_BATCH`] points (10,000 agents cost 100
//! commits every 10 s, never one per heartbeat), pausing between two as long as the
//! last took, so a flush holds other writers up briefly and for at most half of its
//! time. They are stored as [`MetricPoint`] records keyed `server/window/time`, so a
//! chart's range is one walk of one key range. Every replica flushes the agents
//! connected to it.
//!
//! Expiry: 10-second points are kept a day, 5-minute points 30 days. A point's chunk
//! (an hour of 10-second points, a day of 5-minute ones) is named once in the
//! `metric_expiry` index under the time it is due; the leader's [`expire`] reads only
//! the due entries and deletes their points in small batches, like the retention
//! pruner in `maintenance`.
//!
//! [`query`] reads one server's range for `GET /api/v1/servers/{id}/metrics`, picking
//! the window from `since` and `step`, and averages the points to `step` (at most
//! [`MAX_POINTS`]); points still in this replica's buffer are merged in, so the chart
//! is current.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::error::AppError;
use crate::store::{IndexScan, Read, Record, Store, Writer};

/// A resolution points are kept at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// In keys.
    pub name: &'static str,
    /// Seconds one point covers.
    pub secs: i64,
    /// Seconds a point is kept (at least; up to one more chunk).
    pub keep_secs: i64,
    /// Seconds of points one expiry entry names.
    pub chunk_secs: i64,
}

/// 10-second points, kept a day.
pub const FINE: Window = Window {
    name: "10s",
    secs: 10,
    keep_secs: 86_400,
    chunk_secs: 3_600,
};
/// 5-minute points, kept 30 days.
pub const COARSE: Window = Window {
    name: "5m",
    secs: 300,
    keep_secs: 30 * 86_400,
    chunk_secs: 86_400,
};
/// Every window, finest first.
pub const WINDOWS: [Window; 2] = [FINE, COARSE];

/// How often buffered points are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How often the leader expires old points.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);
/// Points one flush transaction writes at most. Every write transaction holds the
/// store's one write turn (on PostgreSQL, every replica's): 5,000 points in one (a
/// replica holding 5,000 agents, every 10 s) held it about 60 ms, and a job's output
/// on any replica waited that long to be stored and shown; with 500 a transaction
/// still held it 10-35 ms on two busy cores, and the job's output, taking turns with
/// the flush, was stored half as fast for the flush's 180 ms.
const FLUSH_BATCH: usize = 100;
/// How long into a flush it pauses between its transactions (each pause as long as
/// the transaction before it); past it, or when the control plane stops, the rest is
/// written back to back.
const FLUSH_PACED_FOR: Duration = Duration::from_secs(1);
/// Points one expiry transaction deletes at most.
const EXPIRE_BATCH: usize = 2_000;
/// Points one expiry pass deletes at most; the next pass goes on.
const EXPIRE_MAX_PER_PASS: usize = 50_000;
/// Most points an answer holds.
pub const MAX_POINTS: i64 = 1_000;
/// A server whose agent said nothing for this long is forgotten by the buffer.
const IDLE_SECS: i64 = 600;
/// Lock shards of the buffer (heartbeats of many agents at once rarely meet).
const SHARDS: usize = 16;

const EXPIRY_INDEX: &str = "metric_expiry";

/// One heartbeat's figures.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    /// Unix seconds.
    pub at: i64,
    pub load1: f64,
    pub cpu_percent: Option<f64>,
    pub mem_used: u64,
    pub mem_total: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

impl Sample {
    /// The figures of a heartbeat received at `at`.
    pub fn of_heartbeat(load: &dynserv_shared::proto::Load, at: DateTime<Utc>) -> Sample {
        Sample {
            at: at.timestamp(),
            load1: load.load[0],
            cpu_percent: load
                .cpu_percent
                .filter(|c| c.is_finite())
                .map(|c| c.clamp(0.0, 100.0)),
            mem_used: load.memory_total.saturating_sub(load.memory_available),
            mem_total: load.memory_total,
            disk_used: load.disk_total.saturating_sub(load.disk_available),
            disk_total: load.disk_total,
        }
    }
}

/// One stored point: the averages of the samples of one window's bucket (totals are
/// the largest seen). Short field names: there are many of these.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricPoint {
    /// `server/window/time`; not stored in the body (the key holds it), so empty
    /// when read back.
    #[serde(skip)]
    pub id: String,
    /// Start of the bucket, unix seconds.
    #[serde(rename = "t")]
    pub at: i64,
    /// Samples averaged.
    #[serde(rename = "n")]
    pub samples: u32,
    #[serde(rename = "l")]
    pub load1: f64,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Samples that carried a CPU figure.
    #[serde(rename = "cn", default)]
    pub cpu_samples: u32,
    #[serde(rename = "mu")]
    pub mem_used: u64,
    #[serde(rename = "mt")]
    pub mem_total: u64,
    #[serde(rename = "du")]
    pub disk_used: u64,
    #[serde(rename = "dt")]
    pub disk_total: u64,
}

impl Record for MetricPoint {
    const TABLE: &'static str = "metric_points";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The key of a point: text order is time order within a server's window.
pub fn point_key(server_id: &str, window: &Window, at: i64) -> String {
    format!("{server_id}/{}/{:011}", window.name, at.max(0))
}

/// The expiry entry of a chunk of points that ends at `chunk_end`.
fn expiry_key(server_id: &str, window: &Window, chunk_end: i64) -> String {
    format!(
        "{:011}/{server_id}/{}",
        (chunk_end + window.keep_secs).max(0),
        window.name
    )
}

/// Running sums of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Acc {
    start: i64,
    n: u32,
    load: f64,
    cpu: f64,
    cpu_n: u32,
    mem_used: f64,
    mem_total: u64,
    disk_used: f64,
    disk_total: u64,
}

impl Acc {
    fn new(start: i64) -> Acc {
        Acc {
            start,
            n: 0,
            load: 0.0,
            cpu: 0.0,
            cpu_n: 0,
            mem_used: 0.0,
            mem_total: 0,
            disk_used: 0.0,
            disk_total: 0,
        }
    }

    fn add(&mut self, s: &Sample) {
        self.n += 1;
        self.load += s.load1;
        if let Some(c) = s.cpu_percent {
            self.cpu += c;
            self.cpu_n += 1;
        }
        self.mem_used += s.mem_used as f64;
        self.mem_total = self.mem_total.max(s.mem_total);
        self.disk_used += s.disk_used as f64;
        self.disk_total = self.disk_total.max(s.disk_total);
    }

    /// Adds a stored point, weighted by its samples (downsampling to a step).
    fn add_point(&mut self, p: &MetricPoint) {
        let n = p.samples.max(1);
        self.n += n;
        self.load += p.load1 * f64::from(n);
        if let Some(c) = p.cpu_percent {
            let cn = p.cpu_samples.max(1);
            self.cpu += c * f64::from(cn);
            self.cpu_n += cn;
        }
        self.mem_used += p.mem_used as f64 * f64::from(n);
        self.mem_total = self.mem_total.max(p.mem_total);
        self.disk_used += p.disk_used as f64 * f64::from(n);
        self.disk_total = self.disk_total.max(p.disk_total);
    }

    fn point(&self) -> MetricPoint {
        let n = f64::from(self.n.max(1));
        MetricPoint {
            id: String::new(),
            at: self.start,
            samples: self.n,
            load1: (self.load / n * 100.0).round() / 100.0,
            cpu_percent: (self.cpu_n > 0)
                .then(|| (self.cpu / f64::from(self.cpu_n) * 10.0).round() / 10.0),
            cpu_samples: self.cpu_n,
            mem_used: (self.mem_used / n).round() as u64,
            mem_total: self.mem_total,
            disk_used: (self.disk_used / n).round() as u64,
            disk_total: self.disk_total,
        }
    }
}

fn bucket_start(at: i64, secs: i64) -> i64 {
    at - at.rem_euclid(secs)
}

/// One server's open buckets and closed points not yet taken.
#[derive(Debug, Default)]
struct Series {
    open: [Option<Acc>; 2],
    closed: Vec<(usize, MetricPoint)>,
    /// Per window, the end of the last chunk named in the expiry index (0: none yet).
    indexed: [i64; 2],
    last: i64,
}

/// A closed point waiting to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub server_id: String,
    /// Index into [`WINDOWS`].
    pub window: usize,
    /// With its key set.
    pub point: MetricPoint,
    /// The end of its chunk when the chunk's expiry entry is still to be written.
    pub new_chunk: Option<i64>,
}

/// The buckets of every server whose agent is connected here, in memory.
#[derive(Debug)]
pub struct Buffer {
    shards: Box<[Mutex<HashMap<String, Series>>]>,
}

impl Default for Buffer {
    fn default() -> Buffer {
        Buffer {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Buffer {
    fn shard(&self, server_id: &str) -> &Mutex<HashMap<String, Series>> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        server_id.hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % self.shards.len()]
    }

    /// Adds a heartbeat's figures to its server's buckets; a bucket the sample is past
    /// closes. Memory only.
    pub fn record(&self, server_id: &str, sample: &Sample) {
        let mut shard = lock(self.shard(server_id));
        let series = match shard.get_mut(server_id) {
            Some(series) => series,
            None => shard.entry(server_id.to_string()).or_default(),
        };
        series.last = series.last.max(sample.at);
        for (i, window) in WINDOWS.iter().enumerate() {
            let start = bucket_start(sample.at, window.secs);
            match &mut series.open[i] {
                // A sample from before the open bucket (a clock step) joins it.
                Some(acc) if acc.start >= start => acc.add(sample),
                open => {
                    if let Some(done) = open.take() {
                        series.closed.push((i, done.point()));
                    }
                    let mut acc = Acc::new(start);
                    acc.add(sample);
                    *open = Some(acc);
                }
            }
        }
    }

    /// Takes the points to write as of `now`: the closed ones and the open buckets
    /// whose time is over (every open bucket when `all`, at shutdown). Forgets
    /// servers idle for a while.
    pub fn take(&self, now: i64, all: bool) -> Vec<Pending> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.retain(|server_id, series| {
                for (i, window) in WINDOWS.iter().enumerate() {
                    let over = series.open[i]
                        .as_ref()
                        .is_some_and(|acc| all || acc.start + window.secs <= now);
                    if over {
                        if let Some(acc) = series.open[i].take() {
                            series.closed.push((i, acc.point()));
                        }
                    }
                }
                for (i, mut point) in series.closed.drain(..) {
                    let window = &WINDOWS[i];
                    point.id = point_key(server_id, window, point.at);
                    let chunk_end =
                        (point.at.div_euclid(window.chunk_secs) + 1) * window.chunk_secs;
                    let new_chunk = (series.indexed[i] != chunk_end).then(|| {
                        series.indexed[i] = chunk_end;
                        chunk_end
                    });
                    out.push(Pending {
                        server_id: server_id.clone(),
                        window: i,
                        point,
                        new_chunk,
                    });
                }
                series.open.iter().any(Option::is_some) || series.last > now - IDLE_SECS
            });
        }
        out
    }

    /// After a failed write: the expiry entries are written again with the next points.
    pub fn forget_indexed(&self) {
        for shard in self.shards.iter() {
            for series in lock(shard).values_mut() {
                series.indexed = [0, 0];
            }
        }
    }

    /// The points of one server and window not yet written: closed ones and the open
    /// bucket as it stands.
    fn unwritten(&self, server_id: &str, window: usize) -> Vec<MetricPoint> {
        let shard = lock(self.shard(server_id));
        let Some(series) = shard.get(server_id) else {
            return Vec::new();
        };
        series
            .closed
            .iter()
            .filter(|(i, _)| *i == window)
            .map(|(_, p)| p.clone())
            .chain(series.open[window].as_ref().map(Acc::point))
            .collect()
    }

    /// Servers with buckets in memory.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether no server has buckets in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes taken points, with the expiry entries of new chunks, in one transaction.
pub fn write(w: &mut Writer, points: &[Pending]) -> anyhow::Result<()> {
    for p in points {
        w.put(&p.point)?;
        if let Some(chunk_end) = p.new_chunk {
            w.index_put(
                EXPIRY_INDEX,
                &expiry_key(&p.server_id, &WINDOWS[p.window], chunk_end),
                &p.server_id,
            )?;
        }
    }
    Ok(())
}

/// Takes what is due from `buffer` and writes it in transactions of at most
/// [`FLUSH_BATCH`] points, paced for [`FLUSH_PACED_FOR`] unless `all` (stopping); how
/// many points. Blocks the calling thread meanwhile.
pub fn flush(store: &Store, buffer: &Buffer, now: i64, all: bool) -> anyhow::Result<usize> {
    let points = buffer.take(now, all);
    let started = Instant::now();
    let mut written = 0;
    for batch in points.chunks(FLUSH_BATCH) {
        let began = Instant::now();
        if let Err(e) = store.write(|w| write(w, batch)) {
            // The rest is lost (memory stays bounded); their chunks are named again.
            buffer.forget_indexed();
            return Err(e.context(format!("{written} of {} points written", points.len())));
        }
        written += batch.len();
        // Every agent's 10-second bucket closes at the same instant, so a flush is
        // one point per agent at once: the pause leaves the write turn (and the
        // cores) to job output between two transactions.
        if !all && written < points.len() && started.elapsed() < FLUSH_PACED_FOR {
            std::thread::sleep(began.elapsed());
        }
    }
    Ok(written)
}

/// What one expiry pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub points: usize,
    pub chunks: usize,
}

/// Deletes the points whose time is over as of `now` (unix seconds), reading only
/// the due expiry entries, in transactions of at most [`EXPIRE_BATCH`] points and at
/// most `max` points in all.
pub fn expire(store: &Store, now: i64, max: usize) -> anyhow::Result<Expired> {
    let mut total = Expired::default();
    while total.points < max {
        let budget = EXPIRE_BATCH.min(max - total.points);
        let done = store.write(|w| expire_batch(w, now, budget))?;
        total.points += done.points;
        total.chunks += done.chunks;
        if done == Expired::default() {
            break;
        }
    }
    Ok(total)
}

fn expire_batch(w: &mut Writer, now: i64, budget: usize) -> anyhow::Result<Expired> {
    let due = w.index_page(&IndexScan {
        index: EXPIRY_INDEX.to_string(),
        lower: String::new(),
        upper: format!("{:011}/\u{10FFFF}", now.max(0)),
        backward: false,
        after: None,
        limit: 64,
    })?;
    let mut done = Expired::default();
    for (key, server_id) in due {
        let mut parts = key.splitn(3, '/');
        let due_at: Option<i64> = parts.next().and_then(|t| t.parse().ok());
        let window = parts
            .nth(1)
            .and_then(|name| WINDOWS.iter().find(|w| w.name == name));
        let (Some(due_at), Some(window)) = (due_at, window) else {
            w.index_delete(EXPIRY_INDEX, &key)?;
            continue;
        };
        let chunk_end = due_at - window.keep_secs;
        let left = budget - done.points;
        let points: Vec<MetricPoint> = w.records_page(&IndexScan {
            index: String::new(),
            lower: format!("{server_id}/{}/", window.name),
            upper: point_key(&server_id, window, chunk_end - 1),
            backward: false,
            after: None,
            limit: left,
        })?;
        for point in &points {
            w.remove::<MetricPoint>(&point_key(&server_id, window, point.at))?;
        }
        done.points += points.len();
        if points.len() < left {
            w.index_delete(EXPIRY_INDEX, &key)?;
            done.chunks += 1;
        }
        if done.points >= budget {
            break;
        }
    }
    Ok(done)
}

/// A validated range of `GET /api/v1/servers/{id}/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Unix seconds.
    pub since: i64,
    pub until: i64,
    /// Seconds each answered point covers.
    pub step: i64,
    /// Index into [`WINDOWS`] of the points read.
    pub window: usize,
}

/// Reads `since` (RFC 3339 or unix seconds; default an hour ago, at most 31 days
/// back) and `step` (seconds, 10 to 86400; default the range over 360, whole 5 minutes
/// past six hours), as of `now`.
/// The 10-second window answers ranges within its day at steps under 5 minutes,
/// the 5-minute window the rest.
pub fn range(since: Option<&str>, step: Option<&str>, now: i64) -> Result<Range, AppError> {
    let since = match since.map(str::trim).filter(|s| !s.is_empty()) {
        None => now - 3_600,
        Some(text) => match text.parse::<i64>() {
            Ok(secs) => secs,
            Err(_) => DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp())
                .map_err(|_| {
                    AppError::bad_request(
                        "since must be a time (RFC 3339, e.g. 2026-01-31T12:00:00Z) or unix seconds",
                    )
                })?,
        },
    };
    if since >= now {
        return Err(AppError::bad_request("since must be in the past"));
    }
    // A day of slack past the retention: a browser's clock a little behind ours still
    // asks for "the last 30 days".
    if since < now - COARSE.keep_secs - 86_400 {
        return Err(AppError::bad_request(
            "since must be within the last 31 days (points are kept 30)",
        ));
    }
    let span = now - since;
    let step = match step.map(str::trim).filter(|s| !s.is_empty()) {
        None => {
            let wanted = (span + 359) / 360;
            // Past six hours, the 5-minute points: far fewer to read.
            let base = if span <= 6 * 3_600 {
                FINE.secs
            } else {
                COARSE.secs
            };
            ((wanted + base - 1) / base * base).max(FINE.secs)
        }
        Some(text) => {
            let step = text
                .parse::<i64>()
                .map_err(|_| AppError::bad_request("step must be a whole number of seconds"))?;
            if !(FINE.secs..=86_400).contains(&step) {
                return Err(AppError::bad_request(
                    "step must be between 10 and 86400 seconds",
                ));
            }
            step
        }
    };
    if span / step > MAX_POINTS {
        return Err(AppError::bad_request(format!(
            "step is too small for this range: at most {MAX_POINTS} points (use a step of at least {} seconds)",
            (span + MAX_POINTS - 1) / MAX_POINTS
        )));
    }
    let window = if since >= now - FINE.keep_secs && step < COARSE.secs {
        0
    } else {
        1
    };
    Ok(Range {
        since,
        until: now,
        step,
        window,
    })
}

/// One answered point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointView {
    pub at: DateTime<Utc>,
    pub load1: f64,
    pub cpu_percent: Option<f64>,
    pub mem_used: u64,
    pub mem_total: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// One server's points over `range`, averaged to its step, oldest first: the stored
/// ones (one key range) and those still in `buffer` (which win for the same bucket).
pub fn query(
    r: &impl Read,
    buffer: &Buffer,
    server_id: &str,
    range: &Range,
) -> anyhow::Result<Vec<PointView>> {
    let window = &WINDOWS[range.window];
    let first = bucket_start(range.since, window.secs);
    let most = usize::try_from((range.until - first) / window.secs + 2).unwrap_or(usize::MAX);
    let stored: Vec<MetricPoint> = r.records_page(&IndexScan {
        index: String::new(),
        lower: point_key(server_id, window, first),
        upper: point_key(server_id, window, range.until),
        backward: false,
        after: None,
        limit: most.min(10_000),
    })?;
    let mut by_time: std::collections::BTreeMap<i64, MetricPoint> =
        stored.into_iter().map(|p| (p.at, p)).collect();
    for p in buffer.unwritten(server_id, range.window) {
        if p.at >= first && p.at <= range.until {
            by_time.insert(p.at, p);
        }
    }
    Ok(downsample(by_time.values(), range.step))
}

/// Averages points (oldest first) into buckets of `step` seconds, weighted by their
/// samples.
pub fn downsample<'a>(points: impl Iterator<Item = &'a MetricPoint>, step: i64) -> Vec<PointView> {
    let mut out = Vec::new();
    let mut acc: Option<Acc> = None;
    let view = |acc: &Acc| {
        let p = acc.point();
        PointView {
            at: DateTime::from_timestamp(p.at, 0).unwrap_or_default(),
            load1: p.load1,
            cpu_percent: p.cpu_percent,
            mem_used: p.mem_used,
            mem_total: p.mem_total,
            disk_used: p.disk_used,
            disk_total: p.disk_total,
        }
    };
    for point in points {
        let start = bucket_start(point.at, step);
        match &mut acc {
            Some(a) if a.start == start => a.add_point(point),
            slot => {
                if let Some(done) = slot.take() {
                    out.push(view(&done));
                }
                let mut a = Acc::new(start);
                a.add_point(point);
                *slot = Some(a);
            }
        }
    }
    if let Some(done) = acc {
        out.push(view(&done));
    }
    out
}

/// Writes this replica's buffered points every [`FLUSH_EVERY`] and, on the leader,
/// expires old points every [`EXPIRE_EVERY`], until `stop` resolves; then writes
/// every open bucket as it stands.
pub async fn flusher(app: App, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let buffer = app.fleet.samples().clone();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expiry = tokio::time::Instant::now();
    loop {
        let stopping = tokio::select! {
            _ = &mut stop => true,
            _ = tick.tick() => false,
        };
        let (store, flushed) = (app.store.clone(), buffer.clone());
        let result = crate::store::blocking(move || {
            flush(&store, &flushed, Utc::now().timestamp(), stopping)
        })
        .await;
        if let Err(e) = result {
            tracing::warn!("writing server metrics: {e:#}");
        }
        if stopping {
            return;
        }
        // With several replicas, one expires (see `cluster`).
        if last_expiry.elapsed() >= EXPIRE_EVERY && app.cluster.is_leader() {
            last_expiry = tokio::time::Instant::now();
            let store = app.store.clone();
            let expired = crate::store::blocking(move || {
                expire(&store, Utc::now().timestamp(), EXPIRE_MAX_PER_PASS)
            })
            .await;
            match expired {
                Ok(done) if done.points > 0 => {
                    tracing::debug!(?done, "server metrics: expired old points")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("expiring server metrics: {e:#}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: i64, load1: f64, cpu: Option<f64>, mem_used: u64) -> Sample {
        Sample {
            at,
            load1,
            cpu_percent: cpu,
            mem_used,
            mem_total: 1_000,
            disk_used: 50,
            disk_total: 100,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        (dir, store)
    }

    /// Samples land in 10-second and 5-minute buckets; a bucket is taken only once
    /// its time is over (or at shutdown), averaged, with the expiry entry of its chunk
    /// named once.
    #[test]
    fn buckets_close_by_time_and_average() {
        let buffer = Buffer::default();
        let t0 = 1_800_000_000; // a multiple of 300
        buffer.record("s1", &sample(t0 + 1, 1.0, Some(10.0), 100));
        buffer.record("s1", &sample(t0 + 6, 3.0, None, 300));
        assert!(
            buffer.take(t0 + 9, false).is_empty(),
            "the bucket is still open"
        );
        buffer.record("s1", &sample(t0 + 11, 5.0, Some(30.0), 500));
        let taken = buffer.take(t0 + 12, false);
        assert_eq!(taken.len(), 1, "{taken:?}");
        let p = &taken[0];
        assert_eq!((p.window, p.point.at, p.point.samples), (0, t0, 2));
        assert_eq!(p.point.id, format!("s1/10s/{t0:011}"));
        assert_eq!(p.point.load1, 2.0);
        assert_eq!(
            p.point.cpu_percent,
            Some(10.0),
            "only samples with a figure count"
        );
        assert_eq!(p.point.mem_used, 200);
        assert_eq!(p.new_chunk, Some(t0 - t0 % 3_600 + 3_600));
        // The next 10 s bucket closes by time; its chunk is already named.
        let taken = buffer.take(t0 + 20, false);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].point.at, t0 + 10);
        assert_eq!(taken[0].new_chunk, None);
        // At shutdown the open 5-minute bucket is written as it stands.
        let taken = buffer.take(t0 + 21, true);
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].window, taken[0].point.samples), (1, 3));
        assert_eq!(taken[0].point.load1, 3.0);
        assert_eq!(taken[0].point.cpu_percent, Some(20.0));
        // A server heard from no more is forgotten.
        assert_eq!(buffer.len(), 1);
        buffer.take(t0 + 11 + IDLE_SECS + 1, false);
        assert!(buffer.is_empty());
    }

    /// `since` and `step` pick the window and are checked; the number of points is
    /// bounded.
    #[test]
    fn range_picks_the_window_and_refuses_bad_values() {
        let now = 1_800_000_000;
        let hour = range(None, None, now).unwrap();
        assert_eq!((hour.since, hour.step, hour.window), (now - 3_600, 10, 0));
        let day = range(Some(&(now - 86_400).to_string()), None, now).unwrap();
        assert_eq!((day.step, day.window), (300, 1));
        let fine_day = range(Some(&(now - 86_400).to_string()), Some("120"), now).unwrap();
        assert_eq!((fine_day.step, fine_day.window), (120, 0));
        let week = range(Some(&(now - 7 * 86_400).to_string()), Some("1800"), now).unwrap();
        assert_eq!(week.window, 1);
        let month = range(
            Some(&(now - 30 * 86_400 - 5).to_string()),
            Some("7200"),
            now,
        )
        .unwrap();
        assert_eq!(month.window, 1, "a browser's clock a little behind is fine");
        let rfc = range(Some("2027-01-15T07:00:00Z"), Some("60"), now).unwrap();
        assert_eq!((rfc.since, rfc.step, rfc.window), (now - 3_600, 60, 0));
        for (since, step) in [
            (Some("yesterday"), None),
            (Some(&*(now + 1).to_string()), None),
            (Some(&*(now - 32 * 86_400).to_string()), None),
            (None, Some("5")),
            (None, Some("ten")),
            (None, Some("100000")),
            (Some(&*(now - 86_400).to_string()), Some("10")),
        ] {
            let e = range(since, step, now).unwrap_err();
            assert_eq!(
                e.status(),
                warp::http::StatusCode::BAD_REQUEST,
                "{since:?} {step:?}"
            );
        }
    }

    /// A large flush is written in several transactions, and a writer that comes
    /// while it runs gets its turn between two of them, not after the last: it sees
    /// some points stored and not all.
    #[test]
    fn a_large_flush_lets_other_writers_in() {
        use crate::store::Read as _;
        let (_dir, store) = store();
        let buffer = Buffer::default();
        let t0 = 1_800_000_000;
        let servers = FLUSH_BATCH * 40;
        for i in 0..servers {
            buffer.record(&format!("s{i}"), &sample(t0, 1.0, None, 100));
        }
        let total = servers as u64;
        let seen = std::thread::scope(|s| {
            let flushing = s.spawn(|| flush(&store, &buffer, t0 + 10, false).unwrap());
            // Once the flush has stored something, write and count what is stored.
            while store.read(|r| r.count::<MetricPoint>()).unwrap() == 0 {
                std::thread::yield_now();
            }
            let seen = store.write(|w| w.count::<MetricPoint>()).unwrap();
            assert_eq!(flushing.join().unwrap(), servers);
            seen
        });
        assert!(
            seen > 0 && seen < total,
            "the writer saw {seen} of {total} points"
        );
        assert_eq!(store.read(|r| r.count::<MetricPoint>()).unwrap(), total);
    }

    /// Points are averaged to the step by their samples; a stored range is read with
    /// what is still in the buffer, which wins for the same bucket.
    #[test]
    fn query_reads_the_range_and_downsamples() {
        let (_dir, store) = store();
        let buffer = Buffer::default();
        let t0 = 1_800_000_000;
        for i in 0..12 {
            buffer.record("s1", &sample(t0 + i * 10, i as f64, Some(50.0), 100));
            buffer.record("s2", &sample(t0 + i * 10, 99.0, None, 999));
        }
        assert_eq!(flush(&store, &buffer, t0 + 110, false).unwrap(), 22);
        // The last 10 s bucket of s1 is still open: a second sample there.
        buffer.record("s1", &sample(t0 + 115, 13.0, Some(50.0), 100));
        let range = Range {
            since: t0,
            until: t0 + 120,
            step: 60,
            window: 0,
        };
        let points = store.read(|r| query(r, &buffer, "s1", &range)).unwrap();
        assert_eq!(points.len(), 2, "{points:?}");
        assert_eq!(points[0].at.timestamp(), t0);
        assert_eq!(points[0].load1, 2.5, "0..=5 averaged");
        assert_eq!(points[0].cpu_percent, Some(50.0));
        // 6..=10 once each, 11 and 13 in the open bucket: (40 + 24) / 7.
        assert_eq!(points[1].load1, ((64.0 / 7.0) * 100.0_f64).round() / 100.0);
        assert_eq!(points[1].mem_total, 1_000);
        // Nothing of another server, nothing outside the range.
        let later = Range {
            since: t0 + 200,
            ..range
        };
        assert!(store
            .read(|r| query(r, &Buffer::default(), "s1", &later))
            .unwrap()
            .is_empty());
    }

    /// Expiry reads only the due chunks, deletes their points in batches and leaves
    /// younger points and other servers alone.
    #[test]
    fn expiry_deletes_due_chunks_in_batches() {
        let (_dir, store) = store();
        let buffer = Buffer::default();
        let t0 = 1_800_000_000; // a whole hour
                                // Two hours of 10 s points for s1, the first hour for s2.
        for i in 0..720 {
            buffer.record("s1", &sample(t0 + i * 10, 1.0, None, 1));
            if i < 360 {
                buffer.record("s2", &sample(t0 + i * 10, 1.0, None, 1));
            }
            if i % 30 == 29 {
                flush(&store, &buffer, t0 + i * 10 + 10, false).unwrap();
            }
        }
        flush(&store, &buffer, t0 + 7_200 + 1, false).unwrap();
        let count = |s: &str, w: &Window| {
            store
                .read(|r| {
                    Ok(r.records_page::<MetricPoint>(&IndexScan::prefix(
                        "",
                        &format!("{s}/{}/", w.name),
                        100_000,
                    ))?
                    .len())
                })
                .unwrap()
        };
        assert_eq!(count("s1", &FINE), 720);
        assert_eq!(count("s2", &FINE), 360);
        // Nothing is due before the first hour's day is over.
        let due = t0 + 3_600 + FINE.keep_secs;
        assert_eq!(
            expire(&store, due - 1, 100_000).unwrap(),
            Expired::default()
        );
        // Then the first hour goes, 500 at a time, the second stays.
        let first = expire(&store, due, 500).unwrap();
        assert_eq!(
            first,
            Expired {
                points: 500,
                chunks: 1
            }
        );
        let rest = expire(&store, due, 100_000).unwrap();
        assert_eq!(
            rest,
            Expired {
                points: 220,
                chunks: 1
            }
        );
        assert_eq!(count("s1", &FINE), 360);
        assert_eq!(count("s2", &FINE), 0);
        assert_eq!(count("s1", &COARSE), 24, "5-minute points stay a month");
        assert_eq!(expire(&store, due + 3_600, 100_000).unwrap().points, 360);
        assert_eq!(count("s1", &FINE), 0);
        assert_eq!(
            expire(&store, t0 + 86_400 + COARSE.keep_secs, 100_000).unwrap(),
            Expired {
                points: 36,
                chunks: 2
            }
        );
    }
}
