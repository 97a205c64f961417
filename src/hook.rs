//! The upload-closed hook: each closed write handle is POSTed as JSON to the configured
//! URL from a background task, with a timeout and a bounded retry. A slow or failing hook
//! never blocks or breaks an SFTP session: when its queue is full, events are dropped (and
//! logged; the audit log has them all).

use std::time::Duration;

use hyper::Method;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::http;

const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Hook {
    tx: mpsc::Sender<Value>,
}

impl Hook {
    /// Starts the delivery task for `url`.
    pub fn start(url: String) -> Hook {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(url, rx));
        Hook { tx }
    }

    pub fn post(&self, event: Value) {
        if self.tx.try_send(event).is_err() {
            tracing::warn!("upload hook queue full; event dropped");
        }
    }
}

async fn deliver(url: String, mut rx: mpsc::Receiver<Value>) {
    while let Some(event) = rx.recv().await {
        let body = event.to_string();
        for attempt in 1..=ATTEMPTS {
            let sent = http::send(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                http::full(body.clone()),
                TIMEOUT,
            )
            .await;
            match sent {
                Ok(resp) if resp.status().is_success() => break,
                Ok(resp) => {
                    tracing::warn!(status = %resp.status(), attempt, "upload hook refused the event")
                }
                Err(e) => tracing::warn!(error = %e, attempt, "upload hook unreachable"),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
    }
}
