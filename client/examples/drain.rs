//! Drains an inbox: walks every undelivered event (optionally of one type),
//! processes it, then acknowledges it. Acknowledging after processing gives
//! at-least-once processing: if this stops between the two, the event is
//! still in the inbox next time.
//!
//! ```sh
//! TRIGGERS_URL=http://127.0.0.1:8080 TRIGGERS_API_KEY=trg_... \
//!     cargo run -p triggers-client --example drain [-- EVENT_TYPE]
//! ```

use std::process::ExitCode;

use futures::TryStreamExt;
use triggers_client::{Client, Event, InboxFilter};

/// The work done for each event; here, one line on stdout.
fn process(event: &Event) -> Result<(), String> {
    println!(
        "{} {} {} {}",
        event.timestamp.to_rfc3339(),
        event.event_id,
        event.event_type,
        event.payload.get()
    );
    Ok(())
}

async fn drain(client: &Client, filter: InboxFilter) -> Result<u64, Box<dyn std::error::Error>> {
    let mut acknowledged = 0u64;
    let mut events = std::pin::pin!(client.inbox_stream(filter, 100));
    while let Some(event) = events.try_next().await? {
        process(&event).map_err(|e| format!("processing {}: {e}", event.event_id))?;
        client.ack(event.event_id).await?;
        acknowledged += 1;
    }
    Ok(acknowledged)
}

#[tokio::main]
async fn main() -> ExitCode {
    let (Ok(url), Ok(key)) = (
        std::env::var("TRIGGERS_URL"),
        std::env::var("TRIGGERS_API_KEY"),
    ) else {
        eprintln!("set TRIGGERS_URL (e.g. http://127.0.0.1:8080) and TRIGGERS_API_KEY");
        return ExitCode::from(2);
    };
    let filter = match std::env::args().nth(1) {
        Some(t) => InboxFilter::event_type(t),
        None => InboxFilter::all(),
    };
    let client = match Client::new(&url, &key) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match drain(&client, filter).await {
        Ok(n) => {
            eprintln!("acknowledged {n} events; the inbox is drained");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
