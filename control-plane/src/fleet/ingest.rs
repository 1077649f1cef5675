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
use crate::store::{Read, Record, Store, Writer};

/// Most items applied in one transaction.
const MAX_BATCH: usize = 4096;
/// Most output bytes applied in one transaction. Viewers see a chunk only after its
/// transaction commits, so a batch holding everything a fast writer has sent (9 MB in
/// one transaction) held its first line back for the whole batch; a few hundred KiB
/// per commit keeps the batching's few fsyncs and lets the output flow.
pub(super) const MAX_BATCH_BYTES: usize = 256 * 1024;

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
    /// A chunk of output; `acked` learns the highest stored seq of the job.
    Chunk {
        execution_id: Arc<str>,
        chunk: OutputChunk,
        acked: watch::Sender<Option<u64>>,
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
            }
        }
    }
    let agent_ids: Vec<String> = agent_ids.into_iter().collect();
    let execution_ids: Vec<String> = execution_ids.into_iter().collect();
    let with_output: Vec<String> = with_output.into_iter().collect();
    w.prefetch_tables(&[
        (agents::Agent::TABLE, &agent_ids),
        (executions::Execution::TABLE, &execution_ids),
    ])?;
    executions::prefetch_output(w, &with_output)?;
    Ok(())
}

/// What a committed batch must announce.
#[derive(Default)]
struct Outcome {
    published: Vec<(Arc<str>, LiveEvent)>,
    acks: HashMap<Arc<str>, u64>,
    /// Jobs an agent started although their execution had already ended.
    stale_starts: Vec<mpsc::UnboundedSender<JobCommand>>,
    /// Status changes for the pages (`live`).
    changes: Vec<crate::live::Event>,
}

/// The live event of an execution's status as this transaction left it.
fn status_change(e: &executions::Execution) -> crate::live::Event {
    crate::live::Event::execution(&e.id, &e.project_id, e.status.as_str())
}

fn apply(store: &Store, hub: &Hub, events: &Events, max_output: u64, batch: &mut Vec<Item>) {
    let now = Utc::now();
    let result = store.write(|w| {
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
                    executions::mark_running(w, execution_id, now)?;
                    // Only while the job is active: a start reported after its end
                    // (a resumed stream of a finished job) leaves nothing behind, and
                    // a job cancelled while it was on its way is stopped.
                    match w
                        .get::<executions::Execution>(execution_id)?
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
                        let shown = executions::display_text(&data);
                        // An empty text tells viewers the seq holds nothing to show.
                        let json = if shown.is_empty() {
                            String::new()
                        } else {
                            serde_json::to_string(&executions::LiveChunk {
                                seq: chunk.seq,
                                stream: stream.as_str(),
                                data: &shown,
                            })?
                        };
                        outcome.published.push((
                            execution_id.clone(),
                            LiveEvent::Chunk {
                                seq: chunk.seq,
                                message: warp::ws::Message::text(json),
                            },
                        ));
                    }
                    let ack = outcome
                        .acks
                        .entry(execution_id.clone())
                        .or_insert(chunk.seq);
                    *ack = (*ack).max(chunk.seq);
                }
                Item::End {
                    execution_id,
                    status,
                    exit_code,
                    summary,
                    facts,
                    ..
                } => {
                    // Running first, so a job that ended before anyone saw it start
                    // still gets a start time.
                    executions::mark_running(w, execution_id, now)?;
                    if executions::finish(w, execution_id, *status, *exit_code, summary, now)? {
                        outcome
                            .published
                            .push((execution_id.clone(), LiveEvent::End));
                        let ended = w.get::<executions::Execution>(execution_id)?;
                        if let (Some(facts), Some(execution)) = (facts, &ended) {
                            // Facts that cannot be kept cost other hosts their
                            // `hostvars` facts, never the execution its end.
                            if let Err(reason) = crate::inventory::record_facts(
                                w,
                                execution.server_id.as_deref(),
                                &execution.id,
                                facts,
                                now,
                            )? {
                                tracing::info!(
                                    execution = %execution_id,
                                    "the job's gathered facts are not kept: {reason}"
                                );
                            }
                        }
                        outcome.changes.extend(ended.as_ref().map(status_change));
                    }
                }
            }
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
                                if current.is_none_or(|c| c < *seq) {
                                    *current = Some(*seq);
                                    true
                                } else {
                                    false
                                }
                            });
                        }
                    }
                    Item::End {
                        done: Some(done), ..
                    } => {
                        let _ = done.send(true);
                    }
                    _ => {}
                }
            }
            for change in outcome.changes {
                events.publish(change);
            }
            let mut run_start = 0;
            let events = outcome.published;
            while run_start < events.len() {
                let id = events[run_start].0.clone();
                let mut run_end = run_start;
                while run_end < events.len() && events[run_end].0 == id {
                    run_end += 1;
                }
                let run: Vec<LiveEvent> = events[run_start..run_end]
                    .iter()
                    .map(|(_, e)| e.clone())
                    .collect();
                hub.publish_stored(&id, &run);
                run_start = run_end;
            }
        }
        Err(e) => {
            // Nothing is acknowledged: agents keep their spool and resend.
            tracing::error!("storing fleet output failed: {e:#}");
            for item in batch.drain(..) {
                if let Item::End {
                    done: Some(done), ..
                } = item
                {
                    let _ = done.send(false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job an agent reports started after its execution ended (cancelled while the
    /// dispatch was on its way) is told to stop; a queued one becomes running and is
    /// left alone.
    #[test]
    fn a_start_after_the_end_cancels_the_job() {
        crate::app::install_execution_hooks();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let cancelled = executions::tests::sample(1, "p", Status::Cancelled, Utc::now());
        let queued = executions::tests::sample(2, "p", Status::Queued, Utc::now());
        store
            .write(|w| {
                w.put(&cancelled)?;
                w.put(&queued)?;
                Ok(())
            })
            .unwrap();
        let (stale_tx, mut stale_rx) = mpsc::unbounded_channel();
        let (live_tx, mut live_rx) = mpsc::unbounded_channel();
        let mut batch = vec![
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
        apply(
            &store,
            &Hub::default(),
            &Events::new(),
            u64::MAX,
            &mut batch,
        );
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
