//! The live fan-out of execution output to viewers. The ingestion publishes each chunk
//! once, after it is stored, in sequence order; viewers subscribe before they read the
//! stored log, so replay-then-follow has no gap, and they skip sequence numbers they
//! already sent, so it has no duplicate. A viewer that falls behind (the channel
//! lagged) goes back to the store for what it missed.
//!
//! A channel exists only while someone watches: the last [`Subscription`] dropped
//! removes it, and an end removes it too, so viewing any number of finished
//! executions leaves nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Events kept per execution for slow viewers before they must re-read the store.
const CAPACITY: usize = 4096;

/// One live event, with its WebSocket message built once for every viewer.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// A stored chunk: the text message `{"seq","stream","data"}` (empty when the
    /// chunk holds nothing to show). Cloning it shares its bytes: 50 viewers of a
    /// fast job sent 50 copies of every chunk before, and each viewer's frame is
    /// written from these bytes ([`crate::web::frames`]).
    Chunk { seq: u64, message: bytes::Bytes },
    /// The execution ended.
    End,
}

impl LiveEvent {
    /// The event for a stored chunk of `stream` holding `data` (see [`chunk_message`]).
    pub fn chunk(seq: u64, stream: &str, data: &str) -> serde_json::Result<LiveEvent> {
        Ok(LiveEvent::Chunk {
            seq,
            message: chunk_message(seq, stream, data)?,
        })
    }
}

/// The WebSocket message viewers get for a stored chunk of `stream` holding `data`,
/// live or replayed, on every replica: the text they are shown (`data` without the
/// job's internal result line) as `{"seq","stream","data"}`, or an empty message when
/// nothing is left to show.
pub fn chunk_message(seq: u64, stream: &str, data: &str) -> serde_json::Result<bytes::Bytes> {
    let shown = crate::executions::display_text(data);
    let json = if shown.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&crate::executions::LiveChunk {
            seq,
            stream,
            data: &shown,
        })?
    };
    Ok(bytes::Bytes::from(json))
}

/// The fan-out hub. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<LiveEvent>>>>,
    /// Other replicas, told what this one stored (set once when the store is shared).
    cluster: Arc<std::sync::OnceLock<crate::cluster::Cluster>>,
}

/// A viewer's hold on one execution's live output; dropping the last one frees the
/// channel.
pub struct Subscription {
    hub: Hub,
    execution_id: String,
    receiver: Option<broadcast::Receiver<LiveEvent>>,
}

impl Subscription {
    /// The receiving end (always present until drop).
    pub fn receiver(&mut self) -> &mut broadcast::Receiver<LiveEvent> {
        self.receiver
            .as_mut()
            .expect("a subscription holds its receiver until it is dropped")
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self.hub.channels.lock().unwrap_or_else(|p| p.into_inner());
        // Drop the receiver while holding the lock, so a concurrent subscribe
        // either sees the channel with its own receiver or makes a new one.
        self.receiver = None;
        if channels
            .get(&self.execution_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            channels.remove(&self.execution_id);
        }
    }
}

impl Hub {
    /// Follows an execution's live output.
    pub fn subscribe(&self, execution_id: &str) -> Subscription {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let receiver = channels
            .entry(execution_id.to_string())
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe();
        Subscription {
            hub: self.clone(),
            execution_id: execution_id.to_string(),
            receiver: Some(receiver),
        }
    }

    /// Publishes events of one execution, in order. Channels nobody listens to are
    /// dropped; an end closes the channel.
    pub fn publish(&self, execution_id: &str, events: impl IntoIterator<Item = LiveEvent>) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sender) = channels.get(execution_id) else {
            return;
        };
        let mut ended = false;
        for event in events {
            ended |= matches!(event, LiveEvent::End);
            if sender.send(event).is_err() {
                channels.remove(execution_id);
                return;
            }
        }
        if ended {
            channels.remove(execution_id);
        }
    }

    /// Tells other replicas from now on what [`Hub::publish_stored`] publishes.
    pub fn set_cluster(&self, cluster: crate::cluster::Cluster) {
        let _ = self.cluster.set(cluster);
    }

    /// Publishes events this replica stored (or decided, for an end) to its viewers,
    /// and tells the other replicas, whose viewers read the chunks from the store.
    pub fn publish_stored(&self, execution_id: &str, events: &[LiveEvent]) {
        self.publish(execution_id, events.iter().cloned());
        if let Some(cluster) = self.cluster.get().filter(|c| c.is_shared()) {
            for message in Self::messages_for_others(execution_id, events) {
                cluster.send(message);
            }
        }
    }

    /// Tells the other replicas what the transaction of `w` stores of an execution
    /// (chunks, its end), in its commit; [`Hub::publish`] gives the events to this
    /// replica's viewers once it committed.
    pub fn tell_others_at_commit(
        &self,
        w: &mut crate::store::Writer,
        execution_id: &str,
        events: &[LiveEvent],
    ) -> anyhow::Result<()> {
        if let Some(cluster) = self.cluster.get().filter(|c| c.is_shared()) {
            for message in Self::messages_for_others(execution_id, events) {
                cluster.send_at_commit(w, message)?;
            }
        }
        Ok(())
    }

    /// What other replicas are told of these events: the range of chunks stored (they
    /// read them from the store), and the end.
    fn messages_for_others(
        execution_id: &str,
        events: &[LiveEvent],
    ) -> Vec<crate::cluster::Message> {
        let mut messages = Vec::new();
        let seqs = events.iter().filter_map(|e| match e {
            LiveEvent::Chunk { seq, .. } => Some(*seq),
            LiveEvent::End => None,
        });
        if let (Some(first), Some(last)) = (seqs.clone().min(), seqs.max()) {
            messages.push(crate::cluster::Message::Output {
                execution: execution_id.to_string(),
                first,
                last,
            });
        }
        if events.iter().any(|e| matches!(e, LiveEvent::End)) {
            messages.push(crate::cluster::Message::End {
                execution: execution_id.to_string(),
            });
        }
        messages
    }

    /// Whether someone watches an execution here.
    pub fn is_watched(&self, execution_id: &str) -> bool {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(execution_id)
    }

    /// Number of executions with viewers.
    pub fn watched(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Subscribers get events in order; an end closes the channel; unwatched
    /// executions cost nothing.
    #[tokio::test]
    async fn fan_out_in_order() {
        let hub = Hub::default();
        hub.publish("x", [LiveEvent::End]);
        assert_eq!(hub.watched(), 0);
        let mut a = hub.subscribe("e");
        let mut b = hub.subscribe("e");
        let (a, b) = (a.receiver(), b.receiver());
        hub.publish(
            "e",
            (0..3).map(|seq| LiveEvent::Chunk {
                seq,
                message: bytes::Bytes::from_static(b"{}"),
            }),
        );
        hub.publish("e", [LiveEvent::End]);
        for rx in [a, b] {
            for want in 0..3 {
                match rx.recv().await.unwrap() {
                    LiveEvent::Chunk { seq, .. } => assert_eq!(seq, want),
                    LiveEvent::End => panic!("end too early"),
                }
            }
            assert!(matches!(rx.recv().await.unwrap(), LiveEvent::End));
        }
        assert_eq!(hub.watched(), 0);
    }

    /// Viewers of executions that never publish again (finished ones) leave no
    /// channel behind once they go: the hub's memory stays flat however many
    /// executions are viewed.
    #[test]
    fn viewers_that_leave_free_their_channel() {
        let hub = Hub::default();
        for n in 0..10_000 {
            let first = hub.subscribe(&format!("finished-{n}"));
            let second = hub.subscribe(&format!("finished-{n}"));
            drop(first);
            assert_eq!(hub.watched(), 1, "one viewer still watches");
            drop(second);
        }
        assert_eq!(hub.watched(), 0);
        // A viewer still watching keeps the channel; publishing reaches it.
        let mut live = hub.subscribe("running");
        hub.publish(
            "running",
            [LiveEvent::Chunk {
                seq: 0,
                message: bytes::Bytes::from_static(b"{}"),
            }],
        );
        assert!(matches!(
            live.receiver().try_recv(),
            Ok(LiveEvent::Chunk { seq: 0, .. })
        ));
        assert_eq!(hub.watched(), 1);
        drop(live);
        assert_eq!(hub.watched(), 0);
    }
}
