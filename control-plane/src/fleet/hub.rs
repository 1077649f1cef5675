//! The live fan-out of execution output to viewers. The ingestion publishes each chunk
//! once, after it is stored, in sequence order; viewers subscribe before they read the
//! stored log, so replay-then-follow has no gap, and they skip sequence numbers they
//! already sent, so it has no duplicate. A viewer that falls behind (the channel
//! lagged) goes back to the store for what it missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Events kept per execution for slow viewers before they must re-read the store.
const CAPACITY: usize = 4096;

/// One live event, with its WebSocket text already serialized once for every viewer.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// A stored chunk: `{"seq","stream","data"}`.
    Chunk { seq: u64, json: Arc<str> },
    /// The execution ended.
    End,
}

/// The fan-out hub. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<LiveEvent>>>>,
}

impl Hub {
    /// Follows an execution's live output.
    pub fn subscribe(&self, execution_id: &str) -> broadcast::Receiver<LiveEvent> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(execution_id.to_string())
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe()
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
        hub.publish(
            "e",
            (0..3).map(|seq| LiveEvent::Chunk {
                seq,
                json: Arc::from("{}"),
            }),
        );
        hub.publish("e", [LiveEvent::End]);
        for rx in [&mut a, &mut b] {
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
}
