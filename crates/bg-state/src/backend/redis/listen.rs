//! The change subscription's connection: pub/sub on the node, the
//! Sentinel master (moving on `+switch-master`) or the Cluster (RESP3
//! pushes, resubscribed after topology changes).

use futures_util::StreamExt;

use tokio::sync::mpsc;

use super::connect::Connector;
use super::{RedisStore, channel};
use crate::model::AppName;

/// What a change subscription heard.
pub(super) enum Heard {
    /// A change, with its generation when the message carried one.
    Change(Option<u64>),
    /// The subscription was made again (a Cluster's topology changed).
    Resubscribed,
    /// Sentinel named a new master: subscribe there.
    Moved,
    /// The connection is gone.
    Lost,
}

pub(super) type Events = std::pin::Pin<Box<dyn futures_util::Stream<Item = Heard> + Send>>;

fn generation_of(payload: Option<String>) -> Heard {
    Heard::Change(payload.and_then(|g| g.parse().ok()))
}

impl RedisStore {
    /// A subscription to the app's channel, or `None` if none can be made now.
    pub(super) async fn listen(&self, app: &AppName) -> Option<Events> {
        let deadline = self.deadline();
        let attempt = tokio::time::timeout(deadline, self.try_listen(app)).await;
        match attempt {
            Ok(Ok(events)) => Some(events),
            Ok(Err(e)) => {
                tracing::debug!(app = %app, error = %self.inner.unavailable(&e), "cannot subscribe to changes");
                None
            }
            Err(_) => {
                tracing::debug!(app = %app, "subscribing to changes timed out");
                None
            }
        }
    }

    async fn try_listen(&self, app: &AppName) -> redis::RedisResult<Events> {
        let changes = |pubsub: redis::aio::PubSub| {
            pubsub
                .into_on_message()
                .map(|m| generation_of(m.get_payload::<String>().ok()))
                .chain(futures_util::stream::once(async { Heard::Lost }))
        };
        match &self.inner.conn {
            Connector::Single { client, .. } => {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel(app)).await?;
                Ok(Box::pin(changes(pubsub)))
            }
            Connector::Sentinel { sentinel, name, .. } => {
                let (master, watcher) = {
                    let mut sentinel = sentinel.lock().await;
                    let master = sentinel.async_get_client().await?;
                    // Without a sentinel to listen to, a failover is still
                    // noticed when the old master's connection breaks.
                    let watcher = sentinel.async_get_sentinel_client().await.ok();
                    (master, watcher)
                };
                let mut pubsub = master.get_async_pubsub().await?;
                pubsub.subscribe(channel(app)).await?;
                let mut events: Events = Box::pin(changes(pubsub));
                if let Some(watcher) = watcher
                    && let Ok(mut sentinel_pubsub) = watcher.get_async_pubsub().await
                    && sentinel_pubsub.subscribe("+switch-master").await.is_ok()
                {
                    let prefix = format!("{name} ");
                    let moved = sentinel_pubsub.into_on_message().filter_map(move |m| {
                        let ours = m
                            .get_payload::<String>()
                            .is_ok_and(|p| p.starts_with(&prefix));
                        async move { ours.then_some(Heard::Moved) }
                    });
                    events = Box::pin(futures_util::stream::select(events, moved));
                }
                Ok(events)
            }
            Connector::Cluster { .. } => {
                let (push_tx, push_rx) = mpsc::unbounded_channel();
                let client = self
                    .cluster_builder()
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(push_tx)
                    .build()?;
                let mut conn = client.get_async_connection().await?;
                conn.subscribe(channel(app)).await?;
                let mut subscribed_once = false;
                let events = futures_util::stream::unfold(
                    (push_rx, conn),
                    move |(mut rx, conn)| async move {
                        loop {
                            let push = rx.recv().await?;
                            let heard = match push.kind {
                                redis::PushKind::Message => generation_of(
                                    push.data
                                        .get(1)
                                        .and_then(|v| redis::from_redis_value_ref(v).ok()),
                                ),
                                redis::PushKind::Subscribe => Heard::Resubscribed,
                                _ => continue,
                            };
                            return Some((heard, (rx, conn)));
                        }
                    },
                )
                .filter(move |h| {
                    // The first confirmation is of the subscribe just made.
                    let first = matches!(h, Heard::Resubscribed) && !subscribed_once;
                    if first {
                        subscribed_once = true;
                    }
                    std::future::ready(!first)
                })
                .chain(futures_util::stream::once(async { Heard::Lost }));
                Ok(Box::pin(events))
            }
        }
    }
}
