//! RabbitMQ: the message the scheduler hands to senders, the connection and the topology.
//! Owns queue names and arguments. RabbitMQ only ever carries work that is due now; nothing
//! here delays a message or holds one unacked as a timer.

use lapin::{
    Channel, Connection, ConnectionProperties,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The body of a due-send message: ids only; the content snapshot lives in PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    /// The send-ledger idempotency key, `enrollment:step:generation`.
    pub key: String,
    pub step_run_id: Uuid,
    pub enrollment_id: Uuid,
    pub sequence_id: Uuid,
    pub workspace_id: Uuid,
}

#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("the broker did not confirm a publish (nack or return)")]
    NotConfirmed,
    #[error("the broker did not confirm a publish within {0:?}")]
    ConfirmTimeout(std::time::Duration),
    /// A round trip to the broker went unanswered for [`RPC_TIMEOUT`]: the session must start
    /// again.
    #[error("the broker did not answer {0} within {1:?}")]
    Unanswered(&'static str, std::time::Duration),
    /// The consumer's stream ended while the worker still runs: its connection or channel is
    /// gone, and the session must start again.
    #[error("the broker ended the consumer")]
    ConsumerEnded,
}

/// How long one round trip to the broker (connect, open a channel, declare, set QoS, consume,
/// publish, ack) may take. lapin can leave a call unanswered for ever when the connection drops
/// while it waits: a scheduler whose `queue.declare` was in flight as RabbitMQ restarted never
/// returned, so it never started the session that gives back its stranded runs. Bounded, the
/// call fails and the session starts again.
pub const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Awaits one broker round trip named `what`, failing with [`MessagingError::Unanswered`] after
/// [`RPC_TIMEOUT`].
pub async fn rpc<T>(
    what: &'static str,
    call: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, MessagingError> {
    within(RPC_TIMEOUT, what, call).await
}

async fn within<T>(
    limit: std::time::Duration,
    what: &'static str,
    call: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, MessagingError> {
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(MessagingError::Unanswered(what, limit)),
    }
}

/// Opens a connection to RabbitMQ (`amqp://`, or `amqps://` over rustls with the webpki roots).
pub async fn connect(url: &str) -> Result<Connection, MessagingError> {
    connect_with_ca(url, None).await
}

/// Opens the connection a role uses: `PULSE_AMQP_URL`, trusting `PULSE_TLS_CA_FILE` too.
pub async fn connect_for(settings: &crate::Settings) -> Result<Connection, MessagingError> {
    connect_with_ca(&settings.amqp_url, settings.tls_ca()?).await
}

/// Opens a connection to RabbitMQ, trusting the PEM certificates of `ca` on top of the webpki
/// roots for `amqps://`.
pub async fn connect_with_ca(url: &str, ca: Option<Vec<u8>>) -> Result<Connection, MessagingError> {
    let cert_chain = ca
        .map(String::from_utf8)
        .transpose()
        .map_err(|_| MessagingError::Tls("the CA bundle is not UTF-8 PEM".into()))?;
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain,
    };
    let runtime = lapin::runtime::default_runtime()?;
    rpc(
        "connection.open",
        Connection::connect_with_config(url, ConnectionProperties::default(), tls, runtime),
    )
    .await
}

/// The dead-letter queue of `queue`: messages that cannot be parsed or handled.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The kind of RabbitMQ queue Pulse declares (`PULSE_QUEUE_TYPE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    /// A classic durable queue: one node holds it (the local default).
    Classic,
    /// A quorum queue, replicated over the cluster by Raft: production.
    Quorum,
}

impl std::str::FromStr for QueueType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            other => Err(format!("{other:?}: expected classic or quorum")),
        }
    }
}

impl QueueType {
    fn arguments(self) -> FieldTable {
        let mut args = FieldTable::default();
        if self == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args
    }
}

/// Declares the send queue and its dead-letter queue, both durable and of `kind`. Idempotent;
/// RabbitMQ refuses (and the session fails, naming the queue) when a queue of that name exists
/// with another kind: a queue's kind is chosen once.
pub async fn declare(
    channel: &Channel,
    queue: &str,
    kind: QueueType,
) -> Result<(), MessagingError> {
    let dead = dead_letter_queue(queue);
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    rpc(
        "queue.declare",
        channel.queue_declare(dead.as_str().into(), options, kind.arguments()),
    )
    .await?;
    let mut args = kind.arguments();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    rpc(
        "queue.declare",
        channel.queue_declare(queue.into(), options, args),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn an_unanswered_round_trip_fails_instead_of_waiting_for_ever() {
        let never = std::future::pending::<lapin::Result<()>>();
        let e = within(Duration::from_millis(20), "queue.declare", never)
            .await
            .err();
        assert!(
            matches!(e, Some(MessagingError::Unanswered("queue.declare", _))),
            "{e:?}"
        );
        let answered = within(Duration::from_secs(1), "basic.qos", async { Ok(7) }).await;
        assert_eq!(answered.ok(), Some(7));
    }
}
