//! [`NatsBus::dead_letters`]: what the JetStream dead-letter subject holds, for operators (the
//! `eventflow dead-letters list --bus nats` command).

use async_nats::jetstream::stream::RawMessageErrorKind;

use super::{BACKEND, NatsBus};
use crate::error::{Error, Result};
use crate::event::Event;

/// One message of the dead-letter subject: an event a JetStream consumer gave up on after
/// `max_deliver` failures, with the failure its headers record.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct NatsDeadLetter {
    /// The stream that stores the dead-letter subject.
    pub stream: String,
    /// The dead letter's sequence in that stream.
    pub sequence: u64,
    /// The subject the event was delivered on (`Eventflow-Subject`).
    pub subject: String,
    /// The consumer that gave up (`Eventflow-Consumer`).
    pub consumer: String,
    /// The last failure (`Eventflow-Error`).
    pub error: String,
    /// Deliveries before it was given up on (`Eventflow-Deliveries`).
    pub deliveries: u64,
    /// The original's sequence in the event stream (`Eventflow-Stream-Sequence`).
    pub stream_sequence: u64,
    /// The event, when the payload decodes (`None` for an undecodable one).
    pub event: Option<Event>,
}

impl NatsBus {
    /// Up to `limit` messages of the dead-letter subject `subject` (what a JetStream bus
    /// configured with [`NatsConfig::dead_letter_subject`](super::NatsConfig::dead_letter_subject)
    /// publishes), oldest first, read from the stream that stores it and left in place. Works
    /// on a bus in either mode: it only reads through the connection.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty subject; [`Error::Backend`] when no stream stores
    /// `subject` or the server cannot answer.
    pub async fn dead_letters(&self, subject: &str, limit: usize) -> Result<Vec<NatsDeadLetter>> {
        if subject.is_empty() {
            return Err(Error::InvalidArgument(
                "nats dead letters: empty dead-letter subject".into(),
            ));
        }
        let context = async_nats::jetstream::new(self.inner.client.clone());
        let name = context.stream_by_subject(subject).await.map_err(|e| {
            Error::backend(
                BACKEND,
                format!("no stream stores the dead-letter subject {subject:?}: {e}"),
            )
        })?;
        let stream = context
            .get_stream_no_info(&name)
            .await
            .map_err(|e| Error::backend(BACKEND, e))?;
        let mut out = Vec::new();
        let mut next = 1;
        while out.len() < limit {
            let message = match stream.get_first_raw_message_by_subject(subject, next).await {
                Ok(message) => message,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(Error::backend(BACKEND, e)),
            };
            next = message.sequence + 1;
            let header = |name: &str| {
                message
                    .headers
                    .get(name)
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            };
            out.push(NatsDeadLetter {
                stream: name.clone(),
                sequence: message.sequence,
                subject: header("Eventflow-Subject"),
                consumer: header("Eventflow-Consumer"),
                error: header("Eventflow-Error"),
                deliveries: header("Eventflow-Deliveries").parse().unwrap_or(0),
                stream_sequence: header("Eventflow-Stream-Sequence").parse().unwrap_or(0),
                event: Event::from_json(&message.payload).ok(),
            });
        }
        Ok(out)
    }
}
