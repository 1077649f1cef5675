//! Output ingestion: one thread that turns what agents report into store writes,
//! batching everything that is waiting into one transaction (one fsync for many
//! chunks), then acknowledging and publishing what it stored.
//!
//! Order matters and is kept: items are applied in the order they were queued, so a
//! job's end is stored after all of its chunks, acknowledgements follow commits, and
//! the hub sees each new chunk once, in sequence order. Chunks already stored (resent
//! after a reconnect) are acknowledged again but neither stored nor published twice.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dynserv_shared::proto::{OutputChunk, OutputStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::gateway::JobCommand;
use super::hub::{Hub, LiveEvent};
use crate::agents::{self, JobHolder, RefusedCopy};
use crate::executions::{self, OutputAdmission, Status};
use crate::live::Events;
use crate::store::{Read, Store, Writer};

/// Most items applied in one transaction.
const MAX_BATCH: usize = 4096;
/// Most output bytes applied in one transaction. Viewers see a chunk only after its
/// transaction commits, so a batch holding everything a fast writer has sent (9 MB in
/// one transaction) held its first line back for the whole batch; a few hundred KiB
/// per commit keeps the batching's few fsyncs and lets the output flow.
pub(super) const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What the ingestion tells a job stream: the highest seq of its output stored, and
/// whether a batch holding some of its output failed. A failed stream is never
/// acknowledged again, even for chunks a later batch stores: a cumulative ack past
/// the chunks that failed would let the agent drop them from its spool, and the
/// job's end is refused too. The stream is then opened again and the agent resends
/// everything past the last ack (`gateway::drive_job`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acked {
    pub up_to: Option<u64>,
    pub failed: bool,
}

/// One thing to store.
pub enum Item {
    /// An agent connected with these facts (a reconnect storm of thousands of agents
    /// becomes a few transactions instead of one fsync each).
    Hello {
        agent_id: String,
        /// Facts, host id (empty from older agents) and protocol of the hello.
        hello: agents::HelloFacts,
        at: DateTime<Utc>,
    },
    /// A copy of an agent was refused: another machine holds its identity.
    Duplicate {
        agent_id: String,
        copy: RefusedCopy,
        at: DateTime<Utc>,
    },
    /// An agent's connection ended; it was last seen then.
    Seen { agent_id: String, at: DateTime<Utc> },
    /// The agent started (or resumed) the job; `holder` is the process that did, when
    /// it said which machine it runs on.
    Started {
        execution_id: Arc<str>,
        holder: Option<JobHolder>,
        /// The job's driver: told to cancel when the execution had already ended (a
        /// queued job cancelled while its dispatch was on its way to the agent).
        driver: Option<mpsc::UnboundedSender<JobCommand>>,
    },
    /// A chunk of output; `acked` learns the highest stored seq of the job, or that
    /// storing it failed.
    Chunk {
        execution_id: Arc<str>,
        chunk: OutputChunk,
        acked: watch::Sender<Acked>,
        /// The job stream's share of its output budget this chunk holds until it is
        /// applied (stored or refused): see `gateway::JOB_OUTPUT_BUDGET_KIB`.
        budget: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// The job ended; `done` learns whether the end is stored.
    End {
        execution_id: Arc<str>,
        status: Status,
        exit_code: Option<i32>,
        summary: String,
        /// The facts the job gathered on its server, kept as the server's latest.
        facts: Option<Box<dynserv_shared::proto::GatheredFacts>>,
        /// The job stream's ack state: an end whose stream lost output in a failed
        /// batch is not stored (`done` learns false).
        acked: Option<watch::Sender<Acked>>,
        done: Option<oneshot::Sender<bool>>,
    },
}

impl Item {
    /// The output the item adds to a log.
    fn output_bytes(&self) -> usize {
        match self {
            Item::Chunk { chunk, .. } => chunk.data.len(),
            _ => 0,
        }
    }
}

/// The sending side of the ingestion thread. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Item>,
}

impl Ingest {
    /// Starts the ingestion thread; it ends when every `Ingest` is dropped.
    /// `max_output` is the most output bytes stored per execution.
    pub fn spawn(store: Store, hub: Hub, events: Events, max_output: u64) -> Ingest {
        let (tx, rx) = mpsc::channel(16 * 1024);
        std::thread::Builder::new()
            .name("fleet-ingest".into())
            .spawn(move || {
                crate::store::allow_blocking_here();
                run(store, hub, events, max_output, rx)
            })
            .expect("spawning the ingestion thread");
        Ingest { tx }
    }

    /// Queues an item; waits when the queue is full (back-pressure on the agent).
    pub async fn send(&self, item: Item) -> bool {
        self.tx.send(item).await.is_ok()
    }
}

fn run(store: Store, hub: Hub, events: Events, max_output: u64, mut rx: mpsc::Receiver<Item>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.output_bytes();
        batch.push(first);
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += item.output_bytes();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        apply(&store, &hub, &events, max_output, &mut batch);
        batch.clear();
    }
}

/// Reads the agents and executions a batch names, and where the logs it adds to end,
/// in three queries: on PostgreSQL
/// the transaction then answers each item's reads from what it holds instead of one
/// round trip per item (a 10,000-agent fan-out ends in a few batches).
fn prefetch(w: &Writer, batch: &[Item]) -> anyhow::Result<()> {
    let mut agent_ids = std::collections::BTreeSet::new();
    let mut execution_ids = std::collections::BTreeSet::new();
    let mut with_output = std::collections::BTreeSet::new();
    let mut status_changes = false;
    for item in batch {
        match item {
            Item::Hello { agent_id, .. }
            | Item::Duplicate { agent_id, .. }
            | Item::Seen { agent_id, .. } => {
                agent_ids.insert(agent_id.to_string());
            }
            Item::Chunk { execution_id, .. } => {
                execution_ids.insert(execution_id.to_string());
                with_output.insert(execution_id.to_string());
            }
            Item::Started { execution_id, .. } | Item::End { execution_id, .. } => {
                execution_ids.insert(execution_id.to_string());
                status_changes = true;
            }
        }
    }
    let agent_ids: Vec<String> = agent_ids.into_iter().collect();
    let execution_ids: Vec<String> = execution_ids.into_iter().collect();
    let with_output: Vec<String> = with_output.into_iter().collect();
    let ahead = crate::store::Ahead::default()
        .records::<agents::Agent>(&agent_ids)
        .records::<executions::Execution>(&execution_ids);
    w.read_ahead(&executions::reports_ahead(
        ahead,
        &with_output,
        status_changes,
    ))?;
    Ok(())
}

/// What a committed batch must announce.
#[derive(Default)]
struct Outcome {
    /// Events for viewers, in runs of one execution each, in the order stored.
    published: Vec<(Arc<str>, Vec<LiveEvent>)>,
    acks: HashMap<Arc<str>, u64>,
    /// Jobs an agent started although their execution had already ended.
    stale_starts: Vec<mpsc::UnboundedSender<JobCommand>>,
    /// Status changes for the pages (`live`).
    changes: Vec<crate::live::Event>,
}

impl Outcome {
    fn publish(&mut self, execution_id: &Arc<str>, event: LiveEvent) {
        match self.published.last_mut() {
            Some((id, run)) if id == execution_id => run.push(event),
            _ => self.published.push((execution_id.clone(), vec![event])),
        }
    }
}

/// Whether an end comes from a job stream that lost output in a failed batch: such an
/// end is not stored. Only this thread marks a stream failed (after a failed batch),
/// so the answer is the same while a batch is applied and when its outcome is told.
fn end_refused(acked: &Option<watch::Sender<Acked>>) -> bool {
    acked.as_ref().is_some_and(|a| a.borrow().failed)
}

/// The live event of an execution's status as this transaction left it.
fn status_change(e: &executions::Execution) -> crate::live::Event {
    crate::live::Event::execution(&e.id, &e.project_id, e.status.as_str())
}

fn apply(store: &Store, hub: &Hub, events: &Events, max_output: u64, batch: &mut Vec<Item>) {
    let now = Utc::now();
    let result = store.write(|w| {
        #[cfg(test)]
        if tests::FAIL_NEXT_BATCH.with(|f| f.replace(false)) {
            anyhow::bail!("a failure the test asked for");
        }
        prefetch(w, batch)?;
        let mut outcome = Outcome::default();
        for item in batch.iter() {
            match item {
                Item::Hello {
                    agent_id,
                    hello,
                    at,
                } => agents::record_hello(w, agent_id, hello, *at)?,
                Item::Duplicate { agent_id, copy, at } => {
                    agents::record_duplicate(w, agent_id, copy, *at)?;
                }
                Item::Seen { agent_id, at } => agents::record_last_seen(w, agent_id, *at)?,
                Item::Started {
                    execution_id,
                    holder,
                    driver,
                } => {
                    // Only while the job is active: a start reported after its end
                    // (a resumed stream of a finished job) leaves nothing behind, and
                    // a job cancelled while it was on its way is stopped.
                    match executions::mark_running(w, execution_id, now)?
                        .filter(|e| !e.status.is_final())
                    {
                        Some(execution) => {
                            outcome.changes.push(status_change(&execution));
                            if let Some(holder) = holder {
                                agents::record_job_holder(w, holder)?;
                            }
                        }
                        None => outcome.stale_starts.extend(driver.clone()),
                    }
                }
                Item::Chunk {
                    execution_id,
                    chunk,
                    ..
                } => {
                    // A chunk resent after a reconnect is acknowledged again but
                    // neither counted, stored nor shown twice.
                    let already = w.log_has(execution_id, chunk.seq)?;
                    let kept: Option<(OutputStream, std::borrow::Cow<'_, str>)> = if already {
                        None
                    } else {
                        match executions::admit_output(
                            w,
                            execution_id,
                            chunk.data.len(),
                            max_output,
                        )? {
                            OutputAdmission::Store => {
                                Some((chunk.stream, chunk.data.as_str().into()))
                            }
                            OutputAdmission::Truncate { marker } => {
                                Some((OutputStream::System, marker.into()))
                            }
                            OutputAdmission::Drop => None,
                        }
                    };
                    if let Some((stream, data)) = kept {
                        let bytes = executions::encode_chunk(stream, &data);
                        w.log_append(execution_id, chunk.seq, &bytes)?;
                        outcome.publish(
                            execution_id,
                            LiveEvent::chunk(chunk.seq, stream.as_str(), &data)?,
                        );
                    }
                    let ack = outcome
                        .acks
                        .entry(execution_id.clone())
                        .or_insert(chunk.seq);
                    *ack = (*ack).max(chunk.seq);
                }
                Item::End { acked, .. } if end_refused(acked) => {}
                Item::End {
                    execution_id,
                    status,
                    exit_code,
                    summary,
                    facts,
                    ..
                } => {
                    if let Some(ended) = executions::finish_reported(
                        w,
                        execution_id,
                        *status,
                        *exit_code,
                        summary,
                        now,
                    )? {
                        outcome.publish(execution_id, LiveEvent::End);
                        if let Some(facts) = facts {
                            // Facts that cannot be kept cost other hosts their
                            // `hostvars` facts, never the execution its end.
                            if let Err(reason) = crate::inventory::record_facts(
                                w,
                                ended.server_id.as_deref(),
                                &ended.id,
                                facts,
                                now,
                            )? {
                                tracing::info!(
                                    execution = %execution_id,
                                    "the job's gathered facts are not kept: {reason}"
                                );
                            }
                        }
                        outcome.changes.push(status_change(&ended));
                    }
                }
            }
        }
        // The other replicas' viewers learn what was stored in the commit itself: a
        // message queued for the cluster's sender after the commit waited for a
        // thread of its own and another round trip, up to 20 ms while a fast job's
        // output kept both cores busy.
        for (id, run) in &outcome.published {
            hub.tell_others_at_commit(w, id, run)?;
        }
        Ok(outcome)
    });
    match result {
        Ok(outcome) => {
            for driver in &outcome.stale_starts {
                let _ = driver.send(JobCommand::Cancel);
            }
            // Acks go out only after the commit: an acked chunk is never lost.
            for item in batch.drain(..) {
                match item {
                    Item::Chunk {
                        execution_id,
                        acked,
                        ..
                    } => {
                        if let Some(seq) = outcome.acks.get(&execution_id) {
                            acked.send_if_modified(|current| {
                                if !current.failed && current.up_to.is_none_or(|c| c < *seq) {
                                    current.up_to = Some(*seq);
                                    true
                                } else {
                                    false
                                }
                            });
                        }
                    }
                    Item::End {
                        done: Some(done),
                        acked,
                        ..
                    } => {
                        let _ = done.send(!end_refused(&acked));
                    }
                    _ => {}
                }
            }
            for change in outcome.changes {
                events.publish(change);
            }
            // The other replicas were told in the commit itself.
            for (id, run) in outcome.published {
                hub.publish(&id, run);
            }
        }
        Err(e) => {
            // Nothing is acknowledged, and the streams whose output was in the batch
            // are told: they are opened again and the agents resend from their spools.
            tracing::error!("storing fleet output failed: {e:#}");
            for item in batch.drain(..) {
                match item {
                    Item::Chunk { acked, .. } => {
                        acked.send_if_modified(|current| {
                            !std::mem::replace(&mut current.failed, true)
                        });
                    }
                    Item::End {
                        done: Some(done), ..
                    } => {
                        let _ = done.send(false);
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    std::thread_local! {
        /// Makes the next batch `apply` runs on this thread fail, as a store that
        /// loses its connection does.
        pub(super) static FAIL_NEXT_BATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A redb store in a temporary directory holding `executions`.
    fn store_holding(executions: &[&executions::Execution]) -> (tempfile::TempDir, Store) {
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .write(|w| executions.iter().try_for_each(|e| w.put(*e)))
            .unwrap();
        (dir, store)
    }

    /// Applies a batch as the ingestion thread does, without viewers or a cap.
    fn apply_batch(store: &Store, mut batch: Vec<Item>) {
        apply(store, &Hub::default(), &Events::new(), u64::MAX, &mut batch);
    }

    /// Output in a batch that failed is never acknowledged past, even when a later
    /// batch stores the job's next chunks: the stream learns it failed, and the job's
    /// end is refused, so the agent keeps its spool and resends on a new stream. The
    /// resent chunks are then stored once and acknowledged on the new stream.
    #[test]
    fn output_lost_in_a_failed_batch_is_never_acknowledged_past() {
        let running = executions::tests::sample(1, "p", Status::Running, Utc::now());
        let (_dir, store) = store_holding(&[&running]);
        let id: Arc<str> = running.id.as_str().into();
        let chunk = |seq: u64, acked: &watch::Sender<Acked>| Item::Chunk {
            execution_id: id.clone(),
            chunk: OutputChunk {
                seq,
                stream: OutputStream::Stdout,
                data: format!("line {seq}\n"),
            },
            acked: acked.clone(),
            budget: None,
        };
        let end = |acked: &watch::Sender<Acked>| {
            let (done, done_rx) = oneshot::channel();
            let item = Item::End {
                execution_id: id.clone(),
                status: Status::Succeeded,
                exit_code: Some(0),
                summary: String::new(),
                facts: None,
                acked: Some(acked.clone()),
                done: Some(done),
            };
            (item, done_rx)
        };
        let run = |batch: Vec<Item>| apply_batch(&store, batch);
        let (first_stream, _watching) = watch::channel(Acked::default());
        run(vec![chunk(0, &first_stream), chunk(1, &first_stream)]);
        assert_eq!(
            *first_stream.borrow(),
            Acked {
                up_to: Some(1),
                failed: false
            }
        );

        FAIL_NEXT_BATCH.with(|f| f.set(true));
        run(vec![chunk(2, &first_stream), chunk(3, &first_stream)]);
        assert_eq!(
            *first_stream.borrow(),
            Acked {
                up_to: Some(1),
                failed: true
            }
        );
        let (item, mut done) = end(&first_stream);
        run(vec![chunk(4, &first_stream), item]);
        assert_eq!(
            *first_stream.borrow(),
            Acked {
                up_to: Some(1),
                failed: true
            },
            "no ack past the chunks that failed"
        );
        assert_eq!(done.try_recv(), Ok(false), "the end is refused");
        let status = |store: &Store| {
            store
                .get::<executions::Execution>(&id)
                .unwrap()
                .unwrap()
                .status
        };
        assert_eq!(status(&store), Status::Running);

        // The new stream: the agent resends from seq 2.
        let (second_stream, _watching) = watch::channel(Acked::default());
        let (item, mut done) = end(&second_stream);
        run(vec![
            chunk(2, &second_stream),
            chunk(3, &second_stream),
            chunk(4, &second_stream),
            item,
        ]);
        assert_eq!(
            *second_stream.borrow(),
            Acked {
                up_to: Some(4),
                failed: false
            }
        );
        assert_eq!(done.try_recv(), Ok(true));
        assert_eq!(status(&store), Status::Succeeded);
        let lines: Vec<u64> = store
            .read(|r| r.log_range(&id, 0, 100))
            .unwrap()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        assert_eq!(lines, [0, 1, 2, 3, 4], "every chunk once");
    }

    /// A job an agent reports started after its execution ended (cancelled while the
    /// dispatch was on its way) is told to stop; a queued one becomes running and is
    /// left alone.
    #[test]
    fn a_start_after_the_end_cancels_the_job() {
        let cancelled = executions::tests::sample(1, "p", Status::Cancelled, Utc::now());
        let queued = executions::tests::sample(2, "p", Status::Queued, Utc::now());
        let (_dir, store) = store_holding(&[&cancelled, &queued]);
        let (stale_tx, mut stale_rx) = mpsc::unbounded_channel();
        let (live_tx, mut live_rx) = mpsc::unbounded_channel();
        let batch = vec![
            Item::Started {
                execution_id: cancelled.id.as_str().into(),
                holder: None,
                driver: Some(stale_tx),
            },
            Item::Started {
                execution_id: queued.id.as_str().into(),
                holder: None,
                driver: Some(live_tx),
            },
        ];
        apply_batch(&store, batch);
        assert!(matches!(stale_rx.try_recv(), Ok(JobCommand::Cancel)));
        assert!(live_rx.try_recv().is_err());
        let stored = |id: &str| {
            store
                .get::<executions::Execution>(id)
                .unwrap()
                .unwrap()
                .status
        };
        assert_eq!(stored(&cancelled.id), Status::Cancelled);
        assert_eq!(stored(&queued.id), Status::Running);
    }
}
